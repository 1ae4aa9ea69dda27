// An independent wallet receives a credential by OpenID4VCI 1.0 (pre-authorized code flow),
// with the OpenWallet Foundation's @openid4vc/openid4vci client; nothing here comes from didgw.
//
//   node receive.mjs --key KEYFILE --offer URI --pin PIN --out FILE [--binding did|jwk]
//                    [--allow-http]
//
// KEYFILE is the holder key (made by `node keys.mjs new KEYFILE`). The proof JWT names the
// key by its did:key DID URL (--binding did, the default) or carries its public JWK
// (--binding jwk). The SD-JWT VC is written to FILE (0600); a JSON summary is printed.
// On a refusal: exit 1, and a JSON line {"refused": …, "status": …, "body": …} on stdout.
import { Openid4vciClient } from "@openid4vc/openid4vci";
import { clientAuthenticationAnonymous } from "@openid4vc/oauth2";
import { setGlobalConfig } from "@openid4vc/utils";
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadKey, random, sha256, signJwt } from "./keys.mjs";

const { values: args } = parseArgs({
  options: {
    key: { type: "string" },
    offer: { type: "string" },
    pin: { type: "string" },
    out: { type: "string" },
    binding: { type: "string", default: "did" },
    "allow-http": { type: "boolean", default: false },
  },
});
for (const name of ["key", "offer", "out"]) {
  if (!args[name]) {
    console.error(`usage: node receive.mjs --key KEYFILE --offer URI --pin PIN --out FILE`);
    process.exit(2);
  }
}
// Plain http:// only when asked (the tests' gateway listens on loopback without TLS).
if (args["allow-http"]) setGlobalConfig({ allowInsecureUrls: true });

const holder = await loadKey(args.key);

const callbacks = {
  hash: (data, alg) => {
    if (alg !== "sha-256") throw new Error(`hash ${alg} not supported`);
    return sha256(data);
  },
  generateRandom: random,
  clientAuthentication: clientAuthenticationAnonymous(),
  signJwt: async (signer, { header, payload }) => {
    if (signer.method === "did" && signer.didUrl !== holder.kid) throw new Error("not our key");
    const jwt = await signJwt(holder.privateKey, header, payload);
    return { jwt, signerJwk: holder.publicJwk };
  },
};

const client = new Openid4vciClient({ callbacks });

function refused(step, error) {
  const response = error.response ?? error.errorResponse;
  const body = error.responseText ?? error.errorResponse ?? error.message;
  console.log(JSON.stringify({ refused: step, status: response?.status ?? null, body }));
  process.exit(1);
}

let offer, metadata;
try {
  offer = await client.resolveCredentialOffer(args.offer);
  metadata = await client.resolveIssuerMetadata(offer.credential_issuer);
} catch (error) {
  refused("offer", error);
}
const configurationId = offer.credential_configuration_ids[0];

let token;
try {
  token = await client.retrievePreAuthorizedCodeAccessTokenFromOffer({
    credentialOffer: offer,
    issuerMetadata: metadata,
    txCode: args.pin,
  });
} catch (error) {
  refused("token", error);
}

let credentials;
try {
  const { c_nonce: nonce } = await client.requestNonce({ issuerMetadata: metadata });
  const signer =
    args.binding === "jwk"
      ? { method: "jwk", publicJwk: holder.publicJwk, alg: "EdDSA" }
      : { method: "did", didUrl: holder.kid, alg: "EdDSA" };
  const proof = await client.createCredentialRequestJwtProof({
    issuerMetadata: metadata,
    credentialConfigurationId: configurationId,
    signer,
    nonce,
  });
  const response = await client.retrieveCredentials({
    issuerMetadata: metadata,
    accessToken: token.accessTokenResponse.access_token,
    credentialConfigurationId: configurationId,
    proofs: { jwt: [proof.jwt] },
  });
  credentials = response.credentialResponse.credentials;
} catch (error) {
  refused("credential", error);
}

const sdJwt = credentials[0].credential;
writeFileSync(args.out, sdJwt, { mode: 0o600 });
const payload = JSON.parse(Buffer.from(sdJwt.split("~")[0].split(".")[1], "base64url"));
console.log(
  JSON.stringify({
    version: metadata.originalDraftVersion,
    credential_configuration_id: configurationId,
    holder: holder.did,
    iss: payload.iss,
    vct: payload.vct,
    sub: payload.sub,
    cnf: payload.cnf,
    disclosures: sdJwt.split("~").length - 2,
  }),
);
