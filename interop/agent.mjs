// Interoperability check: an independent OAuth client against a running mandate.
//
// What it proves: mandate's protocols work with Node's `oauth4webapi` and `jose` (panva's
// standards-strict OAuth 2 and JOSE libraries), not only with our own Go client and our own
// reading of the RFCs. Every protocol step below is done by those libraries with their default,
// standards-strict behaviour; only the mandate-specific steps (agent registration and claiming) are hand-written.
//
//   - RFC 8414 discovery, processed and issuer-checked by oauth4webapi.
//   - Agent registration: a compact JWS made by jose's CompactSign with a key this process
//     generated, the key named by its did:key (computed here, independently of the server).
//   - RFC 6749 §4.4 client_credentials with RFC 7523 private_key_jwt client authentication, signed
//     the way oauth4webapi signs it (for an Ed25519 key: the fully-specified alg "Ed25519" of
//     RFC 9864, which mandate says it accepts), DPoP-bound (RFC 9449) including the server nonce
//     challenge (§8) answered by oauth4webapi's documented retry.
//   - RFC 9068 access token: verified by jose against the remote JWKS (signature, typ at+jwt,
//     iss, aud, required claims), and its cnf.jkt (RFC 9449 §6.1) equal to the RFC 7638
//     thumbprint jose computes of our DPoP key.
//   - A DPoP-protected resource (GET /v1/agent/whoami) called by oauth4webapi's
//     protectedResourceRequest (proof with ath); the same token sent as Bearer is refused with a
//     401 and a WWW-Authenticate: DPoP challenge that oauth4webapi can parse (RFC 9449 §7.1); a
//     replayed proof is refused.
//   - RFC 7662 introspection and RFC 7009 revocation through oauth4webapi; after revocation the
//     token is inactive and the resource refuses it.
//
// Usage: ISSUER=http://127.0.0.1:8420 ADMIN_TOKEN=... node interop/agent.mjs
// Run by interop/interop_test.go (go test ./interop/) against an in-process server.
// Output: one JSON line on stdout with every check ({name, ok, detail}); exit 0 when every check
// passed, 1 otherwise (the failures are also printed on stderr).

import * as oauth from 'oauth4webapi'
import * as jose from 'jose'
import { insecure, checker, run, Fatal, didKey, rand, json, describe, register as registerAgent } from './lib.mjs'

const ISSUER = process.env.ISSUER
const ADMIN_TOKEN = process.env.ADMIN_TOKEN
if (!ISSUER || !ADMIN_TOKEN) {
  console.error('agent.mjs: set ISSUER and ADMIN_TOKEN')
  process.exit(2)
}

const result = { issuer: ISSUER }
const C = checker(result)
const { check, must } = C

// registration is mandate's own step: a JWS over the agent's claims, signed by its key.
function register(privateKey, did, handle, alg) {
  return registerAgent(ISSUER, privateKey, did, handle, alg, 'registered by interop/agent.mjs')
}

async function main() {
  // 1. Discovery (RFC 8414 §3).
  const issuerURL = new URL(ISSUER)
  const as = await oauth.processDiscoveryResponse(
    issuerURL, await oauth.discoveryRequest(issuerURL, { algorithm: 'oauth2', ...insecure }))
  must('discovery', as.issuer === ISSUER && as.token_endpoint && as.jwks_uri, `issuer ${as.issuer}`)
  check('discovery_dpop_algs', as.dpop_signing_alg_values_supported?.includes('Ed25519'),
    `dpop_signing_alg_values_supported=${JSON.stringify(as.dpop_signing_alg_values_supported)}`)
  check('discovery_auth_method', as.token_endpoint_auth_methods_supported?.includes('private_key_jwt'),
    `token_endpoint_auth_methods_supported=${JSON.stringify(as.token_endpoint_auth_methods_supported)}`)

  // 2. Our own keys: the agent's long-term key and a separate DPoP key.
  const agentKey = await jose.generateKeyPair('Ed25519', { extractable: true })
  const dpopKey = await jose.generateKeyPair('Ed25519', { extractable: true })
  const did = await didKey(agentKey.publicKey)
  const dpopJKT = await jose.calculateJwkThumbprint(await jose.exportJWK(dpopKey.publicKey), 'sha256')
  const handle = `interop-${rand().slice(0, 10)}`
  Object.assign(result, { did, handle, dpop_jkt: dpopJKT })

  // 3. Register (mandate's registration JWS) and claim as the admin.
  const reg = await register(agentKey.privateKey, did, handle, 'EdDSA')
  must('register', reg.status === 201 && reg.body.status === 'UNCLAIMED' && reg.body.did === did &&
    reg.body.handle === handle && reg.body.claim_code, `${reg.status} ${JSON.stringify(reg.body)}`)
  const agentID = reg.body.agent_id
  result.agent_id = agentID

  const claimRes = await fetch(`${ISSUER}/v1/agents/claim`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ claim_code: reg.body.claim_code }),
  })
  const claimed = await json(claimRes)
  must('claim', claimRes.status === 200 && claimed.status === 'CLAIMED' && claimed.agent_id === agentID,
    `${claimRes.status} ${JSON.stringify(claimed)}`)
  const agentJKT = await jose.calculateJwkThumbprint(await jose.exportJWK(agentKey.publicKey), 'sha256')
  check('agent_key_thumbprint', claimed.keys?.[0]?.jkt === agentJKT,
    `server jkt ${claimed.keys?.[0]?.jkt}, RFC 7638 thumbprint by jose ${agentJKT}`)

  // The design accepts the fully-specified alg name Ed25519 (RFC 9864) as well as EdDSA on
  // every input; a second, throwaway agent registers with it.
  {
    const k = await jose.generateKeyPair('Ed25519', { extractable: true })
    const r = await register(k.privateKey, await didKey(k.publicKey), `${handle}-ed`, 'Ed25519')
    check('register_alg_Ed25519', r.status === 201,
      `registration JWS with alg "Ed25519" (RFC 9864): ${r.status} ${r.body.error ?? ''}: ${r.body.error_description ?? ''}`)
  }

  // 4. Token: client_credentials, private_key_jwt, DPoP with the nonce retry.
  const client = { client_id: agentID }
  const DPoP = oauth.DPoP(client, dpopKey)
  const nonceRetries = { token: 0, resource: 0 }
  result.nonce_retries = nonceRetries

  // RFC 9449 §8: DPoP-Nonce = 1*NQCHAR, one value in one field line. Every nonce the token
  // endpoint sends is recorded as the client sees it (fetch joins repeated field lines with ", ",
  // RFC 9110 §5.3), and checked by dpop_nonce_header.
  const NQCHARS = /^[\x21\x23-\x5B\x5D-\x7E]+$/
  const nonceHeaders = []
  const nonceFetch = {
    [oauth.customFetch]: async (url, init) => {
      const res = await fetch(url, init)
      const n = res.headers.get('dpop-nonce')
      if (n === null) return res
      nonceHeaders.push(n)
      return res
    },
  }

  async function tokenRequest(clientAuth) {
    const send = () => oauth.clientCredentialsGrantRequest(as, client, clientAuth,
      new URLSearchParams({ scope: 'agent' }), { DPoP, ...insecure, ...nonceFetch })
    let res = await send()
    try {
      return await oauth.processClientCredentialsResponse(as, client, res)
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) throw err
      nonceRetries.token++
      res = await send()
      return await oauth.processClientCredentialsResponse(as, client, res)
    }
  }

  // oauth4webapi signs the client assertion with the alg of the key: "Ed25519" for Ed25519
  // (RFC 9864 fully-specified name); the metadata lists it in
  // token_endpoint_auth_signing_alg_values_supported.
  let tok
  try {
    tok = await tokenRequest(oauth.PrivateKeyJwt({ key: agentKey.privateKey, kid: did }))
    check('token_private_key_jwt_alg_Ed25519', true, 'client assertion alg Ed25519 accepted')
  } catch (err) {
    check('token_private_key_jwt_alg_Ed25519', false,
      `oauth4webapi PrivateKeyJwt (header alg "Ed25519", RFC 9864; advertised in token_endpoint_auth_signing_alg_values_supported=${JSON.stringify(as.token_endpoint_auth_signing_alg_values_supported)}) refused: ${describe(err)}`)
    throw new Fatal('no access token')
  }
  check('dpop_nonce_challenge', nonceRetries.token >= 1,
    `token endpoint asked for a nonce ${nonceRetries.token} time(s) (RFC 9449 §8)`)
  const badNonces = nonceHeaders.filter((n) => !NQCHARS.test(n))
  check('dpop_nonce_header', nonceHeaders.length > 0 && badNonces.length === 0,
    badNonces.length
      ? `DPoP-Nonce as a fetch client reads it: ${JSON.stringify(badNonces[0])}; RFC 9449 §8 wants one nonce (1*NQCHAR) in a single field line, repeated field lines are joined with ", " (RFC 9110 §5.3)`
      : `${nonceHeaders.length} DPoP-Nonce header(s), all single values`)
  must('token_response', tok.token_type === 'dpop' && tok.scope === 'agent' && typeof tok.expires_in === 'number',
    `token_type=${tok.token_type} scope=${tok.scope} expires_in=${tok.expires_in}`)
  result.token_type = tok.token_type

  // 5. The access token, verified independently (RFC 9068 §4).
  const JWKS = jose.createRemoteJWKSet(new URL(as.jwks_uri))
  let verified
  try {
    verified = await jose.jwtVerify(tok.access_token, JWKS, {
      issuer: ISSUER, audience: ISSUER, typ: 'at+jwt',
      requiredClaims: ['iss', 'exp', 'aud', 'sub', 'client_id', 'iat', 'jti'],
    })
  } catch (err) {
    must('access_token_jwt', false, `jose jwtVerify: ${describe(err)}`)
  }
  const { payload: at, protectedHeader: ath } = verified
  result.token = {
    alg: ath.alg, typ: ath.typ, kid: ath.kid, iss: at.iss, sub: at.sub, aud: at.aud, client_id: at.client_id,
    scope: at.scope, jti: at.jti, iat: at.iat, exp: at.exp, cnf_jkt: at.cnf?.jkt, handle: at.handle, did: at.did,
  }
  must('access_token_jwt', ['EdDSA', 'Ed25519', 'ES256'].includes(ath.alg) && at.client_id === agentID &&
    at.scope === 'agent', `alg=${ath.alg} typ=${ath.typ} client_id=${at.client_id} scope=${at.scope}`)
  check('access_token_cnf_jkt', at.cnf?.jkt === dpopJKT, `cnf.jkt=${at.cnf?.jkt} want ${dpopJKT}`)

  // 6. The protected resource with a DPoP proof (ath), retrying once if a nonce is asked.
  const whoamiURL = new URL(`${ISSUER}/v1/agent/whoami`)
  let lastProof
  const capture = {
    [oauth.customFetch]: (url, init) => {
      lastProof = init.headers.dpop
      return fetch(url, init)
    },
  }
  async function callResource(token, opts) {
    try {
      return await oauth.protectedResourceRequest(token, 'GET', whoamiURL, new Headers(), null, opts)
    } catch (err) {
      if (!oauth.isDPoPNonceError(err)) throw err
      nonceRetries.resource++
      return await oauth.protectedResourceRequest(token, 'GET', whoamiURL, new Headers(), null, opts)
    }
  }
  let who
  try {
    const res = await callResource(tok.access_token, { DPoP, ...insecure, ...capture })
    who = await json(res)
    result.whoami = who
    check('resource_dpop', res.status === 200 && who.agent_id === agentID && who.client_id === agentID &&
      who.handle === handle && who.did === did && who.jkt === dpopJKT,
      `${res.status} ${JSON.stringify(who)}`)
  } catch (err) {
    check('resource_dpop', false, describe(err))
  }

  // 7. Negatives at the resource: Bearer use, and a replayed proof.
  try {
    const res = await oauth.protectedResourceRequest(tok.access_token, 'GET', whoamiURL, new Headers(), null, insecure)
    check('resource_bearer_refused', false, `Authorization: Bearer answered ${res.status} without a challenge`)
  } catch (err) {
    const dpopChallenge = err instanceof oauth.WWWAuthenticateChallengeError &&
      err.cause.find((c) => c.scheme === 'dpop')
    check('resource_bearer_refused', err.status === 401 && dpopChallenge &&
      dpopChallenge.parameters.error === 'invalid_token',
      `Authorization: Bearer → ${describe(err)}`)
  }
  if (lastProof) {
    const res = await fetch(whoamiURL, { headers: { authorization: `DPoP ${tok.access_token}`, dpop: lastProof } })
    const challenges = res.headers.get('www-authenticate')
    check('resource_proof_replay_refused', res.status === 401 && /^DPoP\b/i.test(challenges ?? ''),
      `replayed DPoP proof → ${res.status} WWW-Authenticate: ${challenges}`)
  }

  // 8. Introspection (RFC 7662) and revocation (RFC 7009), the agent authenticating itself with
  // private_key_jwt, then the revoked token is inactive and refused at the resource.
  const agentAuth = oauth.PrivateKeyJwt({ key: agentKey.privateKey, kid: did })
  try {
    const intro = await oauth.processIntrospectionResponse(as, client,
      await oauth.introspectionRequest(as, client, agentAuth, tok.access_token, insecure))
    result.introspection = intro
    check('introspection_active', intro.active === true && intro.client_id === agentID &&
      intro.cnf?.jkt === dpopJKT && intro.scope === 'agent' && intro.jti === at.jti,
      JSON.stringify(intro))
  } catch (err) {
    check('introspection_active', false, describe(err))
  }
  try {
    await oauth.processRevocationResponse(
      await oauth.revocationRequest(as, client, agentAuth, tok.access_token, insecure))
    check('revocation', true, '200')
  } catch (err) {
    check('revocation', false, describe(err))
  }
  try {
    const intro = await oauth.processIntrospectionResponse(as, client,
      await oauth.introspectionRequest(as, client, agentAuth, tok.access_token, insecure))
    check('introspection_inactive_after_revocation', intro.active === false, JSON.stringify(intro))
  } catch (err) {
    check('introspection_inactive_after_revocation', false, describe(err))
  }
  try {
    const res = await callResource(tok.access_token, { DPoP, ...insecure })
    check('resource_refuses_revoked', false, `revoked token answered ${res.status}`)
  } catch (err) {
    const c = err instanceof oauth.WWWAuthenticateChallengeError && err.cause.find((c) => c.scheme === 'dpop')
    check('resource_refuses_revoked', err.status === 401 && c?.parameters.error === 'invalid_token',
      `revoked token → ${describe(err)}`)
  }
}

await run(result, C, main)
