// Interoperability check of the proxy's identity assertion: an agent built with Node's
// `oauth4webapi` and `jose` calls an upstream marked identity_assertion through mandate's proxy,
// and the Txn-Token the upstream received is verified by `jose` as an independent upstream would.
//
// What it proves:
//   - An agent registered and claimed here, granted the upstream's resource
//     ({issuer}/proxy/{UPSTREAM}) by the admin; its task token comes from RFC 8693 token exchange
//     by oauth4webapi with a purpose, and the proxied call is a DPoP-protected request
//     (protectedResourceRequest, with the use_dpop_nonce retry).
//   - The upstream (the Go test's, at UPSTREAM_URL) answers with the Txn-Token and the
//     Mandate-Request-Id it received; jose's jwtVerify checks the Txn-Token against
//     createRemoteJWKSet(jwks_uri): typ txntoken+jwt, iss the issuer, aud the upstream's base
//     URL, at most 60 seconds of life; then its claims (draft-ietf-oauth-transaction-tokens
//     names): txn = the task, sub = the principal, purp = the task's purpose, scope, req_id =
//     the Mandate-Request-Id, tctx.chain = the agent and its handle, rctx.req_wl = the issuer.
//
// Usage: ISSUER=… ADMIN_TOKEN=… UPSTREAM=crm UPSTREAM_URL=http://127.0.0.1:9000 node interop/txntoken.mjs
// Run by TestNodeTxnTokenInterop in interop/interop_test.go against an in-process server.
// Output: one JSON line on stdout with every check ({name, ok, detail}); exit 0 when every check
// passed, 1 otherwise.

import * as oauth from 'oauth4webapi'
import * as jose from 'jose'
import { insecure, checker, run, Fatal, didKey, jkt, rand, json, describe, register, admin } from './lib.mjs'

const { ISSUER, ADMIN_TOKEN, UPSTREAM, UPSTREAM_URL } = process.env
if (!ISSUER || !ADMIN_TOKEN || !UPSTREAM || !UPSTREAM_URL) {
  console.error('txntoken.mjs: set ISSUER, ADMIN_TOKEN, UPSTREAM and UPSTREAM_URL')
  process.exit(2)
}
const GRANT_TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const TT_JWT = 'urn:ietf:params:oauth:token-type:jwt'
const PURPOSE = 'reconcile the March invoices'
const RESOURCE = `${ISSUER}/proxy/${UPSTREAM}`

const result = { issuer: ISSUER }
const C = checker(result)
const { check, must } = C

// withNonce runs a DPoP request once more after a use_dpop_nonce challenge.
async function withNonce(send) {
  try {
    return await send()
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err
    return await send()
  }
}

async function main() {
  const issuerURL = new URL(ISSUER)
  const as = await oauth.processDiscoveryResponse(
    issuerURL, await oauth.discoveryRequest(issuerURL, { algorithm: 'oauth2', ...insecure }))
  must('discovery', as.issuer === ISSUER && as.jwks_uri, `issuer ${as.issuer}`)
  const JWKS = jose.createRemoteJWKSet(new URL(as.jwks_uri))

  const me = await admin(ISSUER, ADMIN_TOKEN, 'GET', '/v1/whoami')
  must('principal', me.status === 200 && typeof me.body.id === 'string', `${me.status} ${JSON.stringify(me.body)}`)
  const principal = me.body.id

  const key = await jose.generateKeyPair('Ed25519', { extractable: true })
  const agent = { key, did: await didKey(key.publicKey), jkt: await jkt(key.publicKey), handle: `txn-${rand().slice(0, 8)}` }
  const reg = await register(ISSUER, key.privateKey, agent.did, agent.handle, 'EdDSA', 'registered by interop/txntoken.mjs')
  must('register', reg.status === 201 && reg.body.claim_code, `${reg.status} ${JSON.stringify(reg.body)}`)
  agent.id = reg.body.agent_id
  const claimed = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/agents/claim', { claim_code: reg.body.claim_code })
  must('claim', claimed.status === 200 && claimed.body.status === 'CLAIMED', `${claimed.status} ${JSON.stringify(claimed.body)}`)
  result.agent = { id: agent.id, handle: agent.handle }

  const g = await admin(ISSUER, ADMIN_TOKEN, 'POST', '/v1/grants', {
    agent: `@${agent.handle}`, scopes: [`${UPSTREAM}:read`], resources: [RESOURCE],
  })
  must('grant_created', g.status === 201 && g.body.grant_id, `${g.status} ${JSON.stringify(g.body)}`)
  const grantID = g.body.grant_id

  const client = { client_id: agent.id }
  const dpop = oauth.DPoP(client, key)
  let self
  try {
    self = await withNonce(async () => oauth.processClientCredentialsResponse(as, client,
      await oauth.clientCredentialsGrantRequest(as, client, oauth.PrivateKeyJwt({ key: key.privateKey, kid: agent.did }),
        new URLSearchParams({ scope: 'agent' }), { DPoP: dpop, ...insecure })))
  } catch (err) {
    must('self_token', false, describe(err))
  }
  must('self_token', self.token_type === 'dpop', `token_type=${self.token_type}`)
  const grants = await withNonce(() => oauth.protectedResourceRequest(self.access_token, 'GET',
    new URL(`${ISSUER}/v1/agent/grants`), new Headers(), null, { DPoP: dpop, ...insecure }))
  const grantToken = (await json(grants)).grants?.find((x) => x.grant_id === grantID)?.grant_token
  must('grant_token', typeof grantToken === 'string', `${grants.status}`)

  let task
  try {
    task = await withNonce(async () => oauth.processGenericTokenEndpointResponse(as, client,
      await oauth.genericTokenEndpointRequest(as, client, oauth.None(), GRANT_TOKEN_EXCHANGE,
        new URLSearchParams({ subject_token: grantToken, subject_token_type: TT_JWT, purpose: PURPOSE }), { DPoP: dpop, ...insecure })))
  } catch (err) {
    must('task_token', false, describe(err))
  }
  const txn = jose.decodeJwt(task.access_token).txn
  must('task_token', task.token_type === 'dpop' && typeof txn === 'string', `token_type=${task.token_type} txn=${txn}`)

  let answer
  try {
    const res = await withNonce(() => oauth.protectedResourceRequest(task.access_token, 'GET',
      new URL(`${RESOURCE}/v1/accounts?id=42`), new Headers(), null, { DPoP: dpop, ...insecure }))
    answer = await json(res)
    must('proxied_call', res.status === 200 && typeof answer.txn_token === 'string' && answer.txn_token !== '',
      `${res.status} ${JSON.stringify(answer).slice(0, 300)}`)
  } catch (err) {
    if (err instanceof Fatal) throw err
    must('proxied_call', false, describe(err))
  }
  result.request_id = answer.request_id

  let v
  try {
    v = await jose.jwtVerify(answer.txn_token, JWKS, {
      issuer: ISSUER, audience: UPSTREAM_URL, typ: 'txntoken+jwt', maxTokenAge: '60s',
      requiredClaims: ['iss', 'aud', 'iat', 'exp', 'txn', 'sub', 'req_id', 'tctx', 'rctx'],
    })
  } catch (err) {
    must('txn_token_jwt', false, `jose jwtVerify: ${describe(err)}`)
  }
  const c = v.payload
  result.txn_token = { typ: v.protectedHeader.typ, alg: v.protectedHeader.alg, ...c }
  check('txn_token_jwt', v.protectedHeader.typ === 'txntoken+jwt' && c.exp - c.iat <= 60, `typ=${v.protectedHeader.typ} life=${c.exp - c.iat}`)
  check('txn_token_subject', c.sub === principal && c.txn === txn && c.tctx?.task === txn && c.tctx?.grant === grantID,
    `sub=${c.sub} (principal ${principal}) txn=${c.txn} (task ${txn}) tctx=${JSON.stringify(c.tctx)}`)
  check('txn_token_purpose', c.purp === PURPOSE && c.tctx?.purpose === PURPOSE && c.scope === `${UPSTREAM}:read`,
    `purp=${c.purp} scope=${c.scope}`)
  const chain = c.tctx?.chain ?? []
  check('txn_token_chain', chain.length === 1 && chain[0].agent_id === agent.id && chain[0].handle === agent.handle &&
    chain[0].did === agent.did && c.rctx?.agent_id === agent.id, `chain=${JSON.stringify(chain)} rctx=${JSON.stringify(c.rctx)}`)
  check('txn_token_request_id', typeof answer.request_id === 'string' && answer.request_id.startsWith('req_') &&
    c.req_id === answer.request_id && c.rctx?.req_id === answer.request_id && c.rctx?.req_wl === ISSUER,
  `req_id=${c.req_id} Mandate-Request-Id=${answer.request_id} rctx=${JSON.stringify(c.rctx)}`)
}

await run(result, C, main)
