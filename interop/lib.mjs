// Helpers shared by the interop scripts (agent.mjs, delegation.mjs): the check list and its
// JSON result line, did:key, and mandate's own agent registration. Everything protocol-level is
// left to oauth4webapi and jose in the scripts themselves.

import * as oauth from 'oauth4webapi'
import * as jose from 'jose'
import { randomBytes } from 'node:crypto'

// Loopback http is what the test server speaks; oauth4webapi refuses it unless told.
export const insecure = { [oauth.allowInsecureRequests]: true }

export class Fatal extends Error {}

// checks collects named checks into result.checks; must stops the script at a failed one.
export function checker(result) {
  const checks = []
  result.checks = checks
  function check(name, ok, detail = '') {
    checks.push({ name, ok: !!ok, detail: String(detail) })
    return !!ok
  }
  function must(name, ok, detail) {
    if (!check(name, ok, detail)) throw new Fatal(`${name}: ${detail}`)
  }
  return { checks, check, must }
}

// run runs main, then prints the one JSON result line and exits: 0 when every check passed.
export async function run(result, { checks, check }, main) {
  try {
    await main()
  } catch (err) {
    if (!(err instanceof Fatal)) check('unexpected_error', false, `${describe(err)}\n${err?.stack ?? ''}`)
  }
  const failed = checks.filter((c) => !c.ok)
  result.ok = failed.length === 0
  for (const f of failed) console.error(`FAIL ${f.name}: ${f.detail}`)
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(result.ok ? 0 : 1)
}

// did:key of an Ed25519 public key: "did:key:z" + base58btc(0xed 0x01 || key), per the did:key
// method spec (multicodec ed25519-pub, multibase base58btc).
const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'
function base58btc(bytes) {
  const digits = [0]
  for (const byte of bytes) {
    let carry = byte
    for (let i = 0; i < digits.length; i++) {
      carry += digits[i] << 8
      digits[i] = carry % 58
      carry = (carry / 58) | 0
    }
    while (carry > 0) {
      digits.push(carry % 58)
      carry = (carry / 58) | 0
    }
  }
  let out = ''
  for (let i = 0; i < bytes.length && bytes[i] === 0; i++) out += '1'
  for (let i = digits.length - 1; i >= 0; i--) out += B58[digits[i]]
  return out
}

export async function didKey(publicKey) {
  const jwk = await jose.exportJWK(publicKey)
  const raw = jose.base64url.decode(jwk.x)
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || raw.length !== 32) throw new Error('not an Ed25519 key')
  return 'did:key:z' + base58btc(Uint8Array.from([0xed, 0x01, ...raw]))
}

// jkt is the RFC 7638 thumbprint of a public key, computed by jose.
export async function jkt(publicKey) {
  return jose.calculateJwkThumbprint(await jose.exportJWK(publicKey), 'sha256')
}

export function rand() {
  return randomBytes(16).toString('hex')
}

export async function json(res) {
  const text = await res.text()
  try {
    return JSON.parse(text)
  } catch {
    return { _raw: text }
  }
}

export function describe(err) {
  if (err instanceof oauth.ResponseBodyError) {
    return `${err.status} ${err.error}: ${err.error_description ?? ''}`
  }
  if (err instanceof oauth.WWWAuthenticateChallengeError) {
    return `${err.status} WWW-Authenticate ${JSON.stringify(err.cause)}`
  }
  return `${err?.name ?? 'Error'}: ${err?.message ?? err}${err?.code ? ` (${err.code})` : ''}`
}

// register is mandate's own step: a JWS over the agent's claims, signed by its key.
export async function register(issuer, privateKey, did, handle, alg, description) {
  const now = Math.floor(Date.now() / 1000)
  const jws = await new jose.CompactSign(
    new TextEncoder().encode(JSON.stringify({
      iss: did, aud: issuer, iat: now, exp: now + 120, jti: rand(),
      handle, name: 'oauth4webapi interop agent', description,
    })),
  )
    .setProtectedHeader({ alg, kid: did, typ: 'mandate-registration+jwt' })
    .sign(privateKey)
  const res = await fetch(`${issuer}/v1/agents`, {
    method: 'POST', headers: { 'content-type': 'application/jose' }, body: jws,
  })
  return { status: res.status, body: await json(res) }
}

// admin calls a management route with the admin's API token.
export async function admin(issuer, token, method, path, body) {
  const res = await fetch(`${issuer}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  return { status: res.status, body: await json(res) }
}
