#!/usr/bin/env node
// Resolve did:key DIDs with Digital Bazaar's reference driver
// (@digitalbazaar/did-method-key) and print each DID document as one line of
// JSON on stdout, in the order the DIDs were given.
//
// Usage: node resolve.mjs [--ed25519-2020] DID [DID...]
//
//   (default)       Ed25519 keys (z6Mk...) as "Multikey" verification methods,
//                   via @digitalbazaar/ed25519-multikey. The driver derives no
//                   X25519 keyAgreement key for Multikey.
//   --ed25519-2020  Ed25519 keys as "Ed25519VerificationKey2020", via
//                   @digitalbazaar/ed25519-verification-key-2020. The driver
//                   then also derives an X25519KeyAgreementKey2020 keyAgreement.
//
// Exit status: 0 if every DID resolved; 1 if any failed (a message for each
// failure goes to stderr, the others are still printed); 2 on bad usage.
import * as DidKey from '@digitalbazaar/did-method-key';
import * as Ed25519Multikey from '@digitalbazaar/ed25519-multikey';
import {
  Ed25519VerificationKey2020
} from '@digitalbazaar/ed25519-verification-key-2020';

const USAGE = 'usage: node resolve.mjs [--ed25519-2020] DID [DID...]';

function parseArgs(argv) {
  let suite = 'multikey';
  const dids = [];
  for(const arg of argv) {
    if(arg === '--ed25519-2020') {
      suite = 'ed25519-2020';
    } else if(arg === '-h' || arg === '--help') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    } else if(arg.startsWith('--')) {
      process.stderr.write(`unknown option: ${arg}\n${USAGE}\n`);
      process.exit(2);
    } else {
      dids.push(arg);
    }
  }
  if(dids.length === 0) {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
  return {suite, dids};
}

function makeDriver(suite) {
  const driver = DidKey.driver();
  if(suite === 'ed25519-2020') {
    driver.use({
      multibaseMultikeyHeader: 'z6Mk',
      fromMultibase: Ed25519VerificationKey2020.from
    });
  } else {
    driver.use({
      multibaseMultikeyHeader: 'z6Mk',
      fromMultibase: Ed25519Multikey.from
    });
  }
  return driver;
}

async function main() {
  const {suite, dids} = parseArgs(process.argv.slice(2));
  const driver = makeDriver(suite);
  let failed = 0;
  for(const did of dids) {
    try {
      if(!did.startsWith('did:key:') || did.includes('#')) {
        throw new Error('not a did:key DID (without fragment)');
      }
      const didDocument = await driver.get({did});
      process.stdout.write(JSON.stringify(didDocument) + '\n');
    } catch(e) {
      failed++;
      process.stderr.write(
        `error: cannot resolve ${JSON.stringify(did)}: ${e && e.message}\n`);
    }
  }
  process.exitCode = failed ? 1 : 0;
}

await main();
