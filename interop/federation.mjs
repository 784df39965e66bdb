// Interoperability check of workload identity federation (RFC 7523 jwt-bearer), by Node's
// `oauth4webapi` and `jose`.
//
// What it proves:
//   - jose plays the workload's identity provider: an ES256 key pair generated here, its public
//     JWK pinned as a trusted issuer through the management API, and a GitHub-Actions-shaped
//     assertion signed with it (RFC 7519, RFC 7515).
//   - The exchange by oauth4webapi's generic token endpoint request with
//     grant_type urn:ietf:params:oauth:grant-type:jwt-bearer, the assertion (RFC 7523 §2.1), no
//     client authentication, and a DPoP proof (RFC 9449) including the use_dpop_nonce retry;
//     processGenericTokenEndpointResponse accepts the answer (token_type DPoP).
//   - The access token verified by jose against the remote JWKS: typ at+jwt (RFC 9068), sub = the
//     service account, client_id = the rule, cnf.jkt = the DPoP key's thumbprint (RFC 7638).
//   - The token used as a DPoP-bound credential by oauth4webapi's protectedResourceRequest at the
//     management API (GET /v1/whoami): the service account.
//   - Refusals parsed as RFC 6749 §5.2 errors: an assertion for another audience and one signed
//     by another key both get invalid_grant with the request id, and nothing else.
//
// Usage: ISSUER=http://127.0.0.1:8420 ADMIN_TOKEN=... node interop/federation.mjs
// Run by TestNodeFederationInterop in interop/interop_test.go against an in-process server.
// Output: one JSON line on stdout with every check ({name, ok, detail}); exit 0 when every check
// passed, 1 otherwise.

import * as oauth from 'oauth4webapi'
import * as jose from 'jose'
import { insecure, checker, run, jkt, rand, json, describe, admin } from './lib.mjs'

const ISSUER = process.env.ISSUER
const ADMIN_TOKEN = process.env.ADMIN_TOKEN
if (!ISSUER || !ADMIN_TOKEN) {
  console.error('federation.mjs: set ISSUER and ADMIN_TOKEN')
  process.exit(2)
}

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
const CI_ISSUER = 'https://ci.interop.example'

const result = { issuer: ISSUER }
const C = checker(result)
const { check, must } = C

await run(result, C, async () => {
  const issuerURL = new URL(ISSUER)
  const as = await oauth.processDiscoveryResponse(
    issuerURL, await oauth.discoveryRequest(issuerURL, { algorithm: 'oauth2', ...insecure }))
  check('discovery_jwt_bearer', as.grant_types_supported?.includes(JWT_BEARER),
    `grant_types_supported=${JSON.stringify(as.grant_types_supported)}`)
  const JWKS = jose.createRemoteJWKSet(new URL(as.jwks_uri))

  // 1. The workload's identity provider, and its trust set up by the admin.
  const ci = await jose.generateKeyPair('ES256', { extractable: true })
  const kid = `ci-${rand().slice(0, 8)}`
  const pub = { ...(await jose.exportJWK(ci.publicKey)), kid, alg: 'ES256', use: 'sig' }
  const svcName = `ci-${rand().slice(0, 8)}`
  const svc = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/service-accounts', { name: svcName })
  must('service_account', svc.status === 201 && svc.body.id?.startsWith('svc_'), `${svc.status} ${JSON.stringify(svc.body)}`)
  const iss = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/federation/issuers', { issuer: CI_ISSUER, jwks: { keys: [pub] } })
  must('issuer_pinned', iss.status === 201, `${iss.status} ${JSON.stringify(iss.body)}`)
  const rule = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/federation/rules', {
    issuer: CI_ISSUER, audience: ISSUER, subject_prefix: 'repo:acme/app:',
    condition: 'claims.ref == "refs/heads/main"', service_account: svcName, scope: 'deploy:write deploy:read', require_dpop: true,
  })
  must('rule', rule.status === 201 && rule.body.id?.startsWith('fr_'), `${rule.status} ${JSON.stringify(rule.body)}`)
  result.service_account = svc.body.id
  result.rule = rule.body.id

  const assertion = (claims, key = ci.privateKey, header = { alg: 'ES256', kid, typ: 'JWT' }) =>
    new jose.SignJWT({ repository: 'acme/app', ref: 'refs/heads/main', ...claims })
      .setProtectedHeader(header).setIssuer(CI_ISSUER).setSubject('repo:acme/app:ref:refs/heads/main')
      .setAudience(claims.aud ?? ISSUER).setIssuedAt().setExpirationTime('5m').setJti(rand()).sign(key)

  // 2. The exchange, by oauth4webapi, with a DPoP key of the workload.
  const dpopKey = await jose.generateKeyPair('ES256', { extractable: true })
  const client = { client_id: 'ci-workload' }
  const DPoP = oauth.DPoP(client, dpopKey)
  const exchange = async (params) => {
    const send = () => oauth.genericTokenEndpointRequest(as, client, oauth.None(), JWT_BEARER, new URLSearchParams(params), { DPoP, ...insecure })
    try {
      return await oauth.processGenericTokenEndpointResponse(as, client, await send())
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) throw err
      return await oauth.processGenericTokenEndpointResponse(as, client, await send())
    }
  }
  let tok
  try {
    tok = await exchange({ assertion: await assertion({}), scope: 'deploy:write' })
  } catch (err) {
    must('jwt_bearer', false, `oauth4webapi genericTokenEndpointRequest: ${describe(err)}`)
  }
  must('jwt_bearer', tok.token_type === 'dpop' && tok.scope === 'deploy:write' && tok.expires_in > 0,
    `token_type=${tok.token_type} scope=${tok.scope} expires_in=${tok.expires_in}`)

  // 3. The token, verified by jose.
  let at
  try {
    const v = await jose.jwtVerify(tok.access_token, JWKS, { issuer: ISSUER, audience: ISSUER, typ: 'at+jwt',
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti', 'client_id', 'cnf'] })
    at = v.payload
  } catch (err) {
    must('access_token_jwt', false, `jose jwtVerify: ${describe(err)}`)
  }
  check('access_token_sub', at.sub === svc.body.id && at.client_id === rule.body.id && at.scope === 'deploy:write',
    `sub=${at.sub} client_id=${at.client_id} scope=${at.scope}`)
  const dpopJKT = await jkt(dpopKey.publicKey)
  check('access_token_cnf_jkt', at.cnf?.jkt === dpopJKT, `cnf.jkt=${at.cnf?.jkt}, the DPoP key ${dpopJKT}`)
  check('access_token_lifetime', at.exp - at.iat <= 600, `exp-iat=${at.exp - at.iat}s (at most twice the assertion's 5 minutes, and the rule's 10)`)

  // 4. The token at the management API, DPoP-bound, by oauth4webapi.
  try {
    const call = () => oauth.protectedResourceRequest(tok.access_token, 'GET', new URL(`${ISSUER}/v1/whoami`), new Headers(), null, { DPoP, ...insecure })
    let res
    try {
      res = await call()
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) throw err
      res = await call()
    }
    const body = await json(res)
    check('whoami', res.status === 200 && body.id === svc.body.id && body.service_account === true, `${res.status} ${JSON.stringify(body)}`)
  } catch (err) {
    check('whoami', false, describe(err))
  }

  // 5. Refusals: one generic invalid_grant with the request id, whatever the reason.
  const refused = async (name, params) => {
    try {
      const t = await exchange(params)
      check(name, false, `issued ${t.token_type} token`)
    } catch (err) {
      check(name, err instanceof oauth.ResponseBodyError && err.error === 'invalid_grant' &&
        /^the assertion was refused: an admin can see why with mandate audit --request-id req_/.test(err.error_description ?? ''),
      describe(err))
    }
  }
  await refused('refused_audience', { assertion: await assertion({ aud: 'https://elsewhere.example' }) })
  const other = await jose.generateKeyPair('ES256')
  await refused('refused_signature', { assertion: await assertion({}, other.privateKey) })
  await refused('refused_condition', { assertion: await assertion({ ref: 'refs/heads/dev' }) })
})
