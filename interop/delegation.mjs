// Interoperability check of delegation: a three-level chain (principal → @orchestrator on an
// instance key → @researcher) built and checked by Node's `oauth4webapi` and `jose`.
//
// What it proves, beyond agent.mjs:
//   - Two agents registered here with keys generated here; the admin (the principal) grants the
//     first through the management API (POST /v1/grants).
//   - The orchestrator fetches its grant token (GET /v1/agent/grants, a DPoP-protected resource
//     called by oauth4webapi's protectedResourceRequest with a self token), and jose verifies it
//     against the JWKS: typ grant+jwt, sub = the principal, act.sub = the agent, cnf.jkt = the
//     agent's key.
//   - RFC 8693 token exchange, twice, through oauth4webapi's generic token endpoint request
//     (genericTokenEndpointRequest, grant_type urn:ietf:params:oauth:grant-type:token-exchange)
//     with client authentication None() and the DPoP proof (RFC 9449) as the proof of possession
//     of the subject token, including the use_dpop_nonce retry (§8):
//       1. grant token → task token, with an actor_token (signed by jose) naming an instance key;
//       2. task token → a narrower token for @researcher, the actor_token signed by the
//          researcher's key, the proof by the instance key.
//   - The resulting token verified by jose against createRemoteJWKSet: typ at+jwt, sub = the
//     principal, nested act (RFC 8693 §4.1: outermost = the current actor, inner = the one
//     before, each with sub, handle, did, txn), txn, narrowed scope, resource (aud) and
//     authorization_details (RFC 9396), cnf.jkt = the researcher's key.
//   - A protected resource (a verify-SDK resource the Go test runs at RESOURCE_URL) called with
//     it by oauth4webapi's protectedResourceRequest: it sees the principal and the chain.
//   - Refusals parsed as RFC 6749 §5.2 errors by oauth4webapi: a replayed actor token, a widened
//     scope (invalid_scope), a proof by a key that is not the subject token's (invalid_grant).
//
// Usage: ISSUER=http://127.0.0.1:8420 ADMIN_TOKEN=... RESOURCE_URL=http://127.0.0.1:9000/ node interop/delegation.mjs
// Run by TestNodeDelegationInterop in interop/interop_test.go against an in-process server.
// Output: one JSON line on stdout with every check ({name, ok, detail}); exit 0 when every check
// passed, 1 otherwise.

import * as oauth from 'oauth4webapi'
import * as jose from 'jose'
import { isDeepStrictEqual } from 'node:util'
import { insecure, checker, run, Fatal, didKey, jkt, rand, json, describe, register, admin } from './lib.mjs'

const ISSUER = process.env.ISSUER
const ADMIN_TOKEN = process.env.ADMIN_TOKEN
const RESOURCE_URL = process.env.RESOURCE_URL
if (!ISSUER || !ADMIN_TOKEN || !RESOURCE_URL) {
  console.error('delegation.mjs: set ISSUER, ADMIN_TOKEN and RESOURCE_URL')
  process.exit(2)
}

const GRANT_TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const TT_JWT = 'urn:ietf:params:oauth:token-type:jwt'
const TT_ACCESS = 'urn:ietf:params:oauth:token-type:access_token'

const result = { issuer: ISSUER, resource: RESOURCE_URL }
const C = checker(result)
const { check, must } = C
const nonceRetries = { token: 0, resource: 0 }
result.nonce_retries = nonceRetries

// An agent of this script: its key, did:key, thumbprint, and (once registered) id and handle.
async function newAgent(name) {
  const key = await jose.generateKeyPair('Ed25519', { extractable: true })
  return { name, key, did: await didKey(key.publicKey), jkt: await jkt(key.publicKey), handle: `${name}-${rand().slice(0, 8)}` }
}

// actorToken is the next holder's self-signed JWT (RFC 8693 §2.1 actor_token): kid and iss are
// its did:key, aud this server, short-lived, with a jti. Signed by jose.
function actorToken(a, alg) {
  return new jose.SignJWT({})
    .setProtectedHeader({ alg, kid: a.did, typ: 'JWT' })
    .setIssuer(a.did).setAudience(ISSUER).setIssuedAt().setExpirationTime('2m').setJti(rand())
    .sign(a.key.privateKey)
}

async function main() {
  // 1. Discovery (RFC 8414).
  const issuerURL = new URL(ISSUER)
  const as = await oauth.processDiscoveryResponse(
    issuerURL, await oauth.discoveryRequest(issuerURL, { algorithm: 'oauth2', ...insecure }))
  must('discovery', as.issuer === ISSUER && as.token_endpoint && as.jwks_uri, `issuer ${as.issuer}`)
  check('discovery_token_exchange', as.grant_types_supported?.includes(GRANT_TOKEN_EXCHANGE),
    `grant_types_supported=${JSON.stringify(as.grant_types_supported)}`)
  const JWKS = jose.createRemoteJWKSet(new URL(as.jwks_uri))

  // 2. The principal (the admin), and the agents: orchestrator, its instance key, researcher.
  const me = await admin(ISSUER, ADMIN_TOKEN, 'GET', '/v1/whoami')
  must('principal', me.status === 200 && typeof me.body.id === 'string', `${me.status} ${JSON.stringify(me.body)}`)
  const principal = me.body.id
  const orch = await newAgent('orchestrator')
  const researcher = await newAgent('researcher')
  const instance = await newAgent('instance') // never registered: an ephemeral instance key
  for (const a of [orch, researcher]) {
    const reg = await register(ISSUER, a.key.privateKey, a.did, a.handle, 'EdDSA', 'registered by interop/delegation.mjs')
    must(`register_${a.name}`, reg.status === 201 && reg.body.did === a.did && reg.body.claim_code,
      `${reg.status} ${JSON.stringify(reg.body)}`)
    a.id = reg.body.agent_id
    const claimed = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/agents/claim', { claim_code: reg.body.claim_code })
    must(`claim_${a.name}`, claimed.status === 200 && claimed.body.status === 'CLAIMED' && claimed.body.agent_id === a.id,
      `${claimed.status} ${JSON.stringify(claimed.body)}`)
  }
  Object.assign(result, {
    principal,
    orchestrator: { id: orch.id, handle: orch.handle, did: orch.did, jkt: orch.jkt },
    researcher: { id: researcher.id, handle: researcher.handle, did: researcher.did, jkt: researcher.jkt },
    instance_jkt: instance.jkt,
  })

  // 3. The grant: the admin grants @orchestrator, sub-delegation allowed, two levels deep. The
  // issuer is one of the resources so that the server's own resource (/v1/agent/whoami) could
  // accept the task token; RESOURCE_URL is the Go test's resource.
  const details = [{ type: 'repo', repos: ['acme/*'], actions: ['read', 'write'] }]
  const g = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/grants', {
    agent: `@${orch.handle}`, scopes: ['repo:read', 'repo:write', 'issues:read'],
    resources: [ISSUER, RESOURCE_URL], authorization_details: details,
    max_task_ttl: 3600, max_depth: 2, allow_subdelegation: true,
  })
  must('grant_created', g.status === 201 && g.body.grant_id && g.body.agent_id === orch.id && g.body.principal_id === principal,
    `${g.status} ${JSON.stringify(g.body)}`)
  const grantID = g.body.grant_id
  result.grant = { id: grantID, resources: g.body.resources }

  // 4. The orchestrator's self token (client_credentials, private_key_jwt, DPoP by its own key),
  // then its grant token from GET /v1/agent/grants.
  const orchClient = { client_id: orch.id }
  const orchDPoP = oauth.DPoP(orchClient, orch.key)
  let self
  {
    const send = () => oauth.clientCredentialsGrantRequest(as, orchClient, oauth.PrivateKeyJwt({ key: orch.key.privateKey, kid: orch.did }),
      new URLSearchParams({ scope: 'agent' }), { DPoP: orchDPoP, ...insecure })
    try {
      self = await oauth.processClientCredentialsResponse(as, orchClient, await send())
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) {
        must('self_token', false, describe(err))
      }
      nonceRetries.token++
      self = await oauth.processClientCredentialsResponse(as, orchClient, await send())
    }
  }
  must('self_token', self.token_type === 'dpop', `token_type=${self.token_type}`)

  async function resource(token, url, dpopHandle) {
    const call = () => oauth.protectedResourceRequest(token, 'GET', new URL(url), new Headers(), null, { DPoP: dpopHandle, ...insecure })
    try {
      return await call()
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) throw err
      nonceRetries.resource++
      return await call()
    }
  }

  let grantToken
  try {
    const res = await resource(self.access_token, `${ISSUER}/v1/agent/grants`, orchDPoP)
    const body = await json(res)
    grantToken = body.grants?.find((x) => x.grant_id === grantID)?.grant_token
    must('agent_grants', res.status === 200 && typeof grantToken === 'string',
      `${res.status} ${JSON.stringify(body).slice(0, 500)}`)
  } catch (err) {
    if (err instanceof Fatal) throw err
    must('agent_grants', false, describe(err))
  }

  // 5. The grant token, verified by jose against the JWKS.
  let gt
  try {
    const v = await jose.jwtVerify(grantToken, JWKS, {
      issuer: ISSUER, audience: ISSUER, typ: 'grant+jwt',
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti', 'client_id', 'cnf', 'act'],
    })
    gt = v.payload
    result.grant_token = { typ: v.protectedHeader.typ, alg: v.protectedHeader.alg, ...gt }
  } catch (err) {
    must('grant_token_jwt', false, `jose jwtVerify: ${describe(err)}`)
  }
  check('grant_token_jwt', gt.sub === principal && gt.jti === grantID && gt.client_id === orch.id &&
    gt.act?.sub === orch.id && gt.act?.handle === orch.handle && gt.act?.did === orch.did && gt.act?.act === undefined,
    `sub=${gt.sub} (principal ${principal}) jti=${gt.jti} client_id=${gt.client_id} act=${JSON.stringify(gt.act)}`)
  check('grant_token_cnf_jkt', gt.cnf?.jkt === orch.jkt, `cnf.jkt=${gt.cnf?.jkt}, the orchestrator's key ${orch.jkt}`)

  // The token exchange, by oauth4webapi: the generic token endpoint request with no client
  // authentication (the DPoP proof by the subject token's key is the authentication), and the
  // use_dpop_nonce retry.
  async function exchange(dpopHandle, clientID, params) {
    const client = { client_id: clientID }
    const send = () => oauth.genericTokenEndpointRequest(as, client, oauth.None(), GRANT_TOKEN_EXCHANGE,
      new URLSearchParams(params), { DPoP: dpopHandle, ...insecure })
    try {
      return await oauth.processGenericTokenEndpointResponse(as, client, await send())
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) throw err
      nonceRetries.token++
      return await oauth.processGenericTokenEndpointResponse(as, client, await send())
    }
  }

  // 6. First hop: the grant token starts a task on the orchestrator's instance key. The proof is
  // by the agent's key (the grant token's cnf.jkt); the actor token names the instance key.
  let task
  try {
    task = await exchange(orchDPoP, orch.id, {
      subject_token: grantToken, subject_token_type: TT_JWT,
      actor_token: await actorToken(instance, 'EdDSA'), actor_token_type: TT_JWT,
      purpose: 'triage the backlog',
    })
  } catch (err) {
    must('exchange_start_task', false, `oauth4webapi genericTokenEndpointRequest: ${describe(err)}`)
  }
  must('exchange_start_task', task.token_type === 'dpop' && task.issued_token_type === TT_ACCESS &&
    typeof task.expires_in === 'number',
  `token_type=${task.token_type} issued_token_type=${task.issued_token_type} expires_in=${task.expires_in} scope=${task.scope}`)

  let tt
  try {
    tt = (await jose.jwtVerify(task.access_token, JWKS, {
      issuer: ISSUER, audience: RESOURCE_URL, typ: 'at+jwt',
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti', 'client_id', 'cnf', 'act', 'txn'],
    })).payload
    result.task_token = tt
  } catch (err) {
    must('task_token_jwt', false, `jose jwtVerify: ${describe(err)}`)
  }
  check('task_token_jwt', tt.sub === principal && tt.client_id === orch.id && tt.grant === grantID &&
    tt.scope === 'repo:read repo:write issues:read' && typeof tt.txn === 'string' &&
    isDeepStrictEqual(tt.act, { sub: orch.id, handle: orch.handle, did: orch.did, jkt: instance.jkt, txn: tt.txn }),
  `sub=${tt.sub} client_id=${tt.client_id} grant=${tt.grant} scope=${tt.scope} txn=${tt.txn} act=${JSON.stringify(tt.act)}`)
  check('task_token_cnf_jkt', tt.cnf?.jkt === instance.jkt, `cnf.jkt=${tt.cnf?.jkt}, the instance key ${instance.jkt}`)

  // 7. Second hop: the task is handed, narrower, to @researcher. The proof is by the instance
  // key (the task token's cnf.jkt), the actor token is signed by the researcher's key.
  const instDPoP = oauth.DPoP({ client_id: orch.id }, instance.key)
  const childDetails = [{ type: 'repo', repos: ['acme/web'], actions: ['read'] }]
  const hop2 = {
    subject_token: task.access_token, subject_token_type: TT_ACCESS,
    actor_token: await actorToken(researcher, 'Ed25519'), actor_token_type: TT_JWT,
    scope: 'repo:read', resource: RESOURCE_URL, purpose: 'read the issues',
    authorization_details: JSON.stringify(childDetails),
  }
  let child
  try {
    child = await exchange(instDPoP, orch.id, hop2)
  } catch (err) {
    must('exchange_subdelegate', false, `oauth4webapi genericTokenEndpointRequest: ${describe(err)}`)
  }
  must('exchange_subdelegate', child.token_type === 'dpop' && child.issued_token_type === TT_ACCESS && child.scope === 'repo:read',
    `token_type=${child.token_type} issued_token_type=${child.issued_token_type} scope=${child.scope}`)

  // 8. The resulting token, verified by jose against the remote JWKS.
  let ct, cth
  try {
    const v = await jose.jwtVerify(child.access_token, JWKS, {
      issuer: ISSUER, audience: RESOURCE_URL, typ: 'at+jwt',
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti', 'client_id', 'cnf', 'act', 'txn'],
    })
    ct = v.payload
    cth = v.protectedHeader
    result.child_token = { alg: cth.alg, typ: cth.typ, kid: cth.kid, ...ct }
  } catch (err) {
    must('child_token_jwt', false, `jose jwtVerify: ${describe(err)}`)
  }
  check('child_token_jwt', ['EdDSA', 'Ed25519', 'ES256'].includes(cth.alg) && ct.iss === ISSUER &&
    ct.client_id === researcher.id && ct.grant === grantID, `alg=${cth.alg} iss=${ct.iss} client_id=${ct.client_id} grant=${ct.grant}`)
  check('child_sub_principal', ct.sub === principal, `sub=${ct.sub}, principal ${principal}`)
  const outer = ct.act ?? {}
  const inner = outer.act ?? {}
  check('child_act_outer', outer.sub === researcher.id && outer.handle === researcher.handle &&
    outer.did === researcher.did && outer.txn === ct.txn && outer.jkt === undefined,
  `act=${JSON.stringify({ ...outer, act: undefined })}; want the researcher ${researcher.id} @${researcher.handle} ${researcher.did}, txn ${ct.txn}`)
  check('child_act_inner', inner.sub === orch.id && inner.handle === orch.handle && inner.did === orch.did &&
    inner.txn === tt.txn && inner.jkt === instance.jkt && inner.act === undefined,
  `act.act=${JSON.stringify(inner)}; want the orchestrator ${orch.id} @${orch.handle} ${orch.did}, jkt ${instance.jkt}, txn ${tt.txn}, no deeper act`)
  check('child_txn', typeof ct.txn === 'string' && ct.txn.startsWith('tsk_') && ct.txn !== tt.txn,
    `txn=${ct.txn}, the parent task ${tt.txn}`)
  const aud = [ct.aud].flat()
  check('child_narrowed', ct.scope === 'repo:read' && aud.length === 1 && aud[0] === RESOURCE_URL &&
    isDeepStrictEqual(ct.authorization_details, childDetails) && ct.exp <= tt.exp,
  `scope=${ct.scope} aud=${JSON.stringify(ct.aud)} authorization_details=${JSON.stringify(ct.authorization_details)} exp=${ct.exp} (parent ${tt.exp})`)
  check('child_cnf_jkt', ct.cnf?.jkt === researcher.jkt, `cnf.jkt=${ct.cnf?.jkt}, the researcher's key ${researcher.jkt}`)

  // 9. A protected resource with the child token: the Go test's verify-SDK resource, called by
  // oauth4webapi with a proof by the researcher's key.
  const resDPoP = oauth.DPoP({ client_id: researcher.id }, researcher.key)
  const dataURL = new URL('data', RESOURCE_URL).href
  try {
    const res = await resource(child.access_token, dataURL, resDPoP)
    const who = await json(res)
    result.resource_caller = who
    const chain = who.chain ?? []
    check('resource_child_token', res.status === 200 && who.principal === principal && who.agent_id === researcher.id &&
      who.task === ct.txn && chain.length === 2 &&
      chain[0].agent_id === orch.id && chain[0].instance_jkt === instance.jkt && chain[0].task === tt.txn &&
      chain[1].agent_id === researcher.id && chain[1].did === researcher.did && chain[1].task === ct.txn &&
      isDeepStrictEqual(who.scopes, ['repo:read']),
    `${res.status} ${JSON.stringify(who)}`)
  } catch (err) {
    check('resource_child_token', false, describe(err))
  }
  try {
    const res = await resource(child.access_token, dataURL, instDPoP)
    check('resource_child_token_other_key_refused', false, `child token with a proof by the instance key: ${res.status}`)
  } catch (err) {
    // RFC 9449 §4.3 (check 12: the token's key is the proof's key) makes this an invalid proof,
    // answered with invalid_dpop_proof (§7.1); invalid_token would also be understood.
    const c = err instanceof oauth.WWWAuthenticateChallengeError && err.cause.find((c) => c.scheme === 'dpop')
    check('resource_child_token_other_key_refused', err.status === 401 &&
      ['invalid_dpop_proof', 'invalid_token'].includes(c?.parameters.error),
    `child token with a proof by the instance key → ${describe(err)}`)
  }

  // 10. The server's own resource, GET /v1/agent/whoami, with the first-level task token: the
  // grant named the issuer as a resource (normalised to "<issuer>/"), which the resource takes
  // as its own identifier.
  try {
    const res = await resource(task.access_token, `${ISSUER}/v1/agent/whoami`, instDPoP)
    const who = await json(res)
    check('whoami_task_token', res.status === 200 && who.sub === principal && who.agent_id === orch.id && who.jkt === instance.jkt,
      `${res.status} ${JSON.stringify(who)}`)
  } catch (err) {
    check('whoami_task_token', false, describe(err))
  }

  // 11. Refusals through oauth4webapi's RFC 6749 §5.2 error parsing.
  async function refused(name, dpopHandle, params, wantError) {
    try {
      const r = await exchange(dpopHandle, orch.id, params)
      check(name, false, `issued a token (scope ${r.scope}); want ${wantError}`)
    } catch (err) {
      check(name, err instanceof oauth.ResponseBodyError && err.status === 400 && err.error === wantError,
        `${describe(err)}; want 400 ${wantError}`)
    }
  }
  // The same actor token again (RFC 8693 leaves replay to the server; mandate uses each once).
  await refused('exchange_actor_token_replay_refused', instDPoP, hop2, 'invalid_request')
  await refused('exchange_scope_widening_refused', instDPoP, {
    ...hop2, actor_token: await actorToken(researcher, 'EdDSA'), scope: 'repo:read repo:admin',
  }, 'invalid_scope')
  // The proof by the researcher's key, not the task token's (cnf.jkt = the instance key).
  await refused('exchange_wrong_proof_key_refused', resDPoP, {
    ...hop2, actor_token: await actorToken(researcher, 'EdDSA'),
  }, 'invalid_grant')
}

await run(result, C, main)
