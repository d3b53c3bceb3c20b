// A real OpenID Connect provider for the single sign-on tests: the certified `oidc-provider` package from the
// npm registry (package.json here), with its development sign-in and consent pages (any login, any password).
//
// Usage: node provider.mjs CONFIG.json PORT
//
// CONFIG.json: {"issuer": "http://127.0.0.1:PORT", "clients": [{client_id, client_secret, redirect_uris}],
//               "accounts": {"<login>": {"email": ..., "preferred_username": ..., "groups": [...]}}}
// The accounts are read again at every sign-in, so a test changes someone's groups by rewriting the file,
// as an identity provider's admin would. Prints "ready <issuer>" once it listens.
import fs from 'node:fs';

import Provider from 'oidc-provider';

const [configPath, port] = process.argv.slice(2);
const load = () => JSON.parse(fs.readFileSync(configPath, 'utf8'));
const config = load();

const provider = new Provider(config.issuer, {
  clients: config.clients,
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['loom-test-only-cookie-key'] },
  async findAccount(ctx, id) {
    const account = load().accounts[id];
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...account }) };
  },
});

provider.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`ready ${config.issuer}\n`);
});
