// A real OpenID Connect provider for Portico's tests: oidc-provider (OpenID Certified),
// with its development login and consent pages (any login, any password).
// Usage: node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI POST_LOGOUT_URI [ID_TOKEN_TTL]
// Prints "ready" once it listens; exits when its stdin closes (the test ended).
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri, postLogoutUri, idTokenTtl] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUri.split(','),
    post_logout_redirect_uris: postLogoutUri.split(','),
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups'] },
  // Claims go in the ID token itself (Portico reads no userinfo).
  conformIdTokenClaims: false,
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({
      sub,
      email: `${sub}@example.test`,
      email_verified: true,
      name: `User ${sub}`,
      groups: sub === 'admin' ? ['admins', 'staff'] : ['staff'],
    }),
  }),
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    IdToken: Number(idTokenTtl || 3600),
    AccessToken: 3600,
    RefreshToken: 86400,
    Session: 3600,
    Interaction: 600,
    Grant: 86400,
  },
  cookies: { keys: ['portico-tests-only'] },
});
// Portico refreshes the tokens of a session; the provider must not ask for a new consent.
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log('ready');
});
process.stdin.on('end', () => server.close(() => process.exit(0)));
process.stdin.resume();
