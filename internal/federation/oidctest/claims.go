package oidctest

import (
	"strconv"
	"strings"
	"time"
)

// Claims returns the registered claims of a token of this issuer: iss, sub, aud, a random jti,
// iat and nbf now and exp in five minutes (by the issuer's clock).
func (is *Issuer) Claims(sub, aud string) map[string]any {
	return is.claims(sub, aud, 5*time.Minute)
}

func (is *Issuer) claims(sub string, aud any, ttl time.Duration) map[string]any {
	now := is.now()
	return map[string]any{
		"iss": is.URL, "sub": sub, "aud": aud, "jti": randomHex(16),
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(),
	}
}

// GitHubActions returns claims shaped like a GitHub Actions OIDC token of a push to main of
// repository ("OWNER/REPO"). A job with an environment has the environment claim and the sub
// repo:OWNER/REPO:environment:NAME; environment "" means none, and sub
// repo:OWNER/REPO:ref:refs/heads/main. iss is this issuer's URL, not GitHub's.
func (is *Issuer) GitHubActions(aud, repository, environment string) map[string]any {
	owner, _, _ := strings.Cut(repository, "/")
	sub := "repo:" + repository + ":ref:refs/heads/main"
	if environment != "" {
		sub = "repo:" + repository + ":environment:" + environment
	}
	c := is.claims(sub, aud, 5*time.Minute)
	for k, v := range map[string]any{
		"ref": "refs/heads/main", "ref_type": "branch", "ref_protected": "true",
		"sha":                   "e7b1d2c4a9f0813b6d5e4c3a2b1f0e9d8c7b6a59",
		"repository":            repository,
		"repository_owner":      owner,
		"repository_id":         strconv.Itoa(100000 + len(repository)),
		"repository_owner_id":   strconv.Itoa(9000 + len(owner)),
		"repository_visibility": "private",
		"actor":                 "octocat", "actor_id": "583231",
		"run_id": "9876543210", "run_number": "42", "run_attempt": "1",
		"runner_environment": "github-hosted",
		"workflow":           "deploy",
		"event_name":         "push",
		"head_ref":           "", "base_ref": "",
		"workflow_ref":     repository + "/.github/workflows/deploy.yml@refs/heads/main",
		"workflow_sha":     "e7b1d2c4a9f0813b6d5e4c3a2b1f0e9d8c7b6a59",
		"job_workflow_ref": repository + "/.github/workflows/deploy.yml@refs/heads/main",
		"job_workflow_sha": "e7b1d2c4a9f0813b6d5e4c3a2b1f0e9d8c7b6a59",
	} {
		c[k] = v
	}
	if environment != "" {
		c["environment"] = environment
	}
	return c
}

// Kubernetes returns claims shaped like a projected service-account token of a pod in
// namespace running as serviceAccount: sub system:serviceaccount:NS:NAME, the kubernetes.io
// object, aud as an array, a ten-minute lifetime (the shortest kubelet asks for).
func (is *Issuer) Kubernetes(aud, namespace, serviceAccount string) map[string]any {
	c := is.claims("system:serviceaccount:"+namespace+":"+serviceAccount, []any{aud}, 10*time.Minute)
	c["kubernetes.io"] = map[string]any{
		"namespace": namespace,
		"serviceaccount": map[string]any{
			"name": serviceAccount, "uid": "5e2f6b4c-7d1a-4c8e-9f3b-2a1d0c9b8e7f",
		},
		"pod": map[string]any{
			"name": serviceAccount + "-7d9f8b6c5d-x2k4q", "uid": "0b6c1e52-3d4f-4a7b-8c9d-1e2f3a4b5c6d",
		},
		"node": map[string]any{
			"name": "node-1", "uid": "c4d5e6f7-8a9b-4c0d-9e1f-2a3b4c5d6e7f",
		},
		"warnafter": c["exp"],
	}
	return c
}

// GitLab returns claims shaped like a GitLab CI ID token of a pipeline on branch main of
// projectPath ("GROUP/PROJECT"): sub project_path:GROUP/PROJECT:ref_type:branch:ref:main.
func (is *Issuer) GitLab(aud, projectPath string) map[string]any {
	group := projectPath
	if i := strings.LastIndexByte(projectPath, '/'); i >= 0 {
		group = projectPath[:i]
	}
	c := is.claims("project_path:"+projectPath+":ref_type:branch:ref:main", aud, 5*time.Minute)
	for k, v := range map[string]any{
		"namespace_id": strconv.Itoa(7000 + len(group)), "namespace_path": group,
		"project_id": strconv.Itoa(20000 + len(projectPath)), "project_path": projectPath,
		"user_id": "1", "user_login": "sample-user", "user_email": "sample-user@example.com",
		"user_access_level": "developer",
		"pipeline_id":       "574", "pipeline_source": "push",
		"job_id": "302", "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main",
		"ref_protected": "true", "runner_id": int64(1), "runner_environment": "gitlab-hosted",
		"sha":                "714a629c0b401fdce83e847fc9589983fc6f46bc",
		"project_visibility": "private",
		"ci_config_ref_uri":  "gitlab.com/" + projectPath + "//.gitlab-ci.yml@refs/heads/main",
		"ci_config_sha":      "714a629c0b401fdce83e847fc9589983fc6f46bc",
	} {
		c[k] = v
	}
	return c
}
