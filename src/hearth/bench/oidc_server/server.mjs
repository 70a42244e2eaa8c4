// A real OAuth 2.0 / OpenID Connect server for Hearth's login tests: npm oidc-provider with one
// public (native, PKCE) client and one test user, alice / wonderland.
//
// Environment (all optional):
//   PORT           port on 127.0.0.1 (default 0: the kernel picks one)
//   ISSUER         issuer URL (default http://127.0.0.1:<port>)
//   CLIENT_ID      the public client's id (default hearth-test)
//   REDIRECT_URIS  comma-separated redirect URIs (default http://127.0.0.1/callback); the client is
//                  "native", so a loopback http URI matches on any port (RFC 8252 section 7.3)
//
// Once it serves, it prints one JSON line on stdout: {"listening": port, "issuer": ..., "client_id": ...}.
//
// oidc-provider's built-in devInteractions accept any password, so they are off: the small
// login/consent handler below checks the password itself, so "wrong password" can be tested.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const TEST_ACCOUNT = 'alice';
const TEST_PASSWORD = 'wonderland';
const MAX_FORM_BYTES = 16 * 1024;

const port = Number.parseInt(process.env.PORT ?? '0', 10);
const clientId = process.env.CLIENT_ID || 'hearth-test';
// Access tokens' lifetime in seconds (tests of the refresh use a few seconds).
const accessTokenTtl = Number.parseInt(process.env.ACCESS_TOKEN_TTL ?? '3600', 10);
const redirectUris = (process.env.REDIRECT_URIS || 'http://127.0.0.1/callback')
  .split(',')
  .map((uri) => uri.trim())
  .filter(Boolean);

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Cache-Control': 'no-store',
  });
  res.end(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>
`);
}

function loginPage(res, uid, error) {
  const message = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '';
  page(res, 200, 'Sign-in', `${message}
<form autocomplete="off" action="/interaction/${escapeHtml(uid)}" method="post">
  <input type="hidden" name="prompt" value="login">
  <input required type="text" name="login" placeholder="login" autofocus>
  <input required type="password" name="password" placeholder="password">
  <button type="submit">Sign-in</button>
</form>
<a href="/interaction/${escapeHtml(uid)}/abort">Cancel</a>`);
}

function consentPage(res, uid, clientName) {
  page(res, 200, 'Authorize', `<p>${escapeHtml(clientName)} asks for offline access.</p>
<form autocomplete="off" action="/interaction/${escapeHtml(uid)}" method="post">
  <input type="hidden" name="prompt" value="consent">
  <button type="submit">Continue</button>
</form>
<a href="/interaction/${escapeHtml(uid)}/abort">Cancel</a>`);
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

async function findAccount(ctx, id) {
  if (id !== TEST_ACCOUNT) {
    return undefined;
  }
  return { accountId: id, claims: async () => ({ sub: id }) };
}

async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    page(res, 400, 'Bad request', '<p>This sign-in page belongs to another interaction.</p>');
    return;
  }
  const prompt = details.prompt.name;
  if (action === 'abort') {
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false },
    );
    return;
  }
  if (req.method === 'GET') {
    if (prompt === 'login') {
      loginPage(res, uid);
    } else {
      consentPage(res, uid, details.params.client_id);
    }
    return;
  }
  const form = await readForm(req);
  if (form.get('prompt') !== prompt) {
    page(res, 400, 'Bad request', '<p>The form does not match the current step.</p>');
    return;
  }
  if (prompt === 'login') {
    if (form.get('login') !== TEST_ACCOUNT || form.get('password') !== TEST_PASSWORD) {
      loginPage(res, uid, 'Invalid login or password.');
      return;
    }
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: TEST_ACCOUNT } },
      { mergeWithLastSubmission: false },
    );
    return;
  }
  // Consent: grant what the prompt found missing (as oidc-provider's devInteractions do).
  const { grantId, session, params } = details;
  const missing = details.prompt.details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) {
    grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  }
  if (missing.missingOIDCClaims) {
    grant.addOIDCClaims(missing.missingOIDCClaims);
  }
  await provider.interactionFinished(
    req,
    res,
    { consent: { grantId: await grant.save() } },
    { mergeWithLastSubmission: true },
  );
}

const INTERACTION_PATH = /^\/interaction\/([A-Za-z0-9_-]+)(\/abort)?$/;

function handlerFor(provider) {
  const oidc = provider.callback();
  return (req, res) => {
    const { pathname } = new URL(req.url, 'http://localhost');
    const matched = INTERACTION_PATH.exec(pathname);
    if (!matched) {
      oidc(req, res);
      return;
    }
    const [, uid, abort] = matched;
    const allowed = abort ? ['GET'] : ['GET', 'POST'];
    if (!allowed.includes(req.method)) {
      res.writeHead(405, { Allow: allowed.join(', ') });
      res.end();
      return;
    }
    interaction(provider, req, res, uid, abort ? 'abort' : 'render').catch((err) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // SessionNotFound and friends: the interaction expired or its cookie is missing.
      const status = err.statusCode ?? 500;
      page(res, status, 'Sign-in failed', `<p>${escapeHtml(err.error_description ?? err.message)}</p>`);
    });
  };
}

const server = createServer((req, res) => {
  res.writeHead(503, { 'Content-Type': 'text/plain' });
  res.end('starting\n');
});

server.listen(port, '127.0.0.1', () => {
  const bound = server.address().port;
  const issuer = process.env.ISSUER || `http://127.0.0.1:${bound}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
      },
    ],
    pkce: { required: () => true },
    rotateRefreshToken: true,
    ttl: { AccessToken: accessTokenTtl },
    scopes: ['openid', 'offline_access'],
    claims: { openid: ['sub'] },
    conformIdTokenClaims: false,
    findAccount,
    features: { devInteractions: { enabled: false }, revocation: { enabled: true } },
    interactions: { url: (ctx, found) => `/interaction/${found.uid}` },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
  });
  server.removeAllListeners('request');
  server.on('request', handlerFor(provider));
  process.stdout.write(`${JSON.stringify({ listening: bound, issuer, client_id: clientId })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
