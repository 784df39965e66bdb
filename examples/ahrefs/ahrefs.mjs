#!/usr/bin/env node
// ahrefs.mjs — a tiny Ahrefs API v3 client in the style of the usual agent tools: it reads its
// API key from AHREFS_API_KEY and the API's base URL from AHREFS_API_BASE, and knows nothing of
// mandate. No npm dependencies (Node 20's fetch).
//
//   AHREFS_API_KEY=… node ahrefs.mjs ahrefs.com
//   mandate exec --grant gr_… --purpose "SEO report" \
//       --upstream ahrefs=AHREFS_API_BASE --placeholder AHREFS_API_KEY -- node ahrefs.mjs ahrefs.com

const key = process.env.AHREFS_API_KEY;
const base = (process.env.AHREFS_API_BASE || "https://api.ahrefs.com").replace(/\/+$/, "");
const target = process.argv[2];

if (!key) {
  console.error("ahrefs: set AHREFS_API_KEY");
  process.exit(2);
}
if (!target) {
  console.error("usage: node ahrefs.mjs DOMAIN");
  process.exit(2);
}

const params = new URLSearchParams({
  target,
  date: new Date().toISOString().slice(0, 10),
  output: "json",
});
const url = `${base}/v3/site-explorer/domain-rating?${params}`;

let res;
try {
  res = await fetch(url, {
    headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
  });
} catch (err) {
  console.error(`ahrefs: GET ${base}/v3/site-explorer/domain-rating: ${err.cause?.message ?? err.message}`);
  process.exit(1);
}
const body = await res.text();
if (!res.ok) {
  console.error(`ahrefs: HTTP ${res.status}: ${body}`);
  process.exit(1);
}
console.log(JSON.stringify(JSON.parse(body), null, 2));
