// nginx-as-an-API-gateway for bench/gateway.sh: the same HS256 check Portico makes —
// signature (the algorithm pinned), exp, iss, aud and a role claim — in njs. Returns the
// token's subject, or "" when the token is refused.
const crypto = require('crypto');

function sub(r) {
    const auth = r.headersIn.Authorization || '';
    if (!auth.startsWith('Bearer ')) {
        return '';
    }
    const parts = auth.slice(7).split('.');
    if (parts.length !== 3) {
        return '';
    }
    try {
        const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
        if (header.alg !== 'HS256') {
            return '';
        }
        const mac = crypto.createHmac('sha256', process.env.JWT_SECRET)
            .update(parts[0] + '.' + parts[1]).digest('base64url');
        if (mac !== parts[2]) {
            return '';
        }
        const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
        const now = Date.now() / 1000;
        if (typeof claims.exp !== 'number' || claims.exp <= now) {
            return '';
        }
        if (claims.iss !== 'https://idp.example.com' || claims.aud !== 'api') {
            return '';
        }
        if (claims.role !== 'admin' && claims.role !== 'user') {
            return '';
        }
        return String(claims.sub);
    } catch (e) {
        return '';
    }
}

export default { sub };
