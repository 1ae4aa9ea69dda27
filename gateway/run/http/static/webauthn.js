// didgw WebAuthn helpers, shared by passkeys.js and market.js: the gateway sends WebAuthn
// options as JSON with base64url strings; the browser's API takes and gives ArrayBuffers.
// post() sends JSON with the page's anti-CSRF token and throws the gateway's message (in
// the reader's language), else ``noAnswer``, the page's words for no answer.
"use strict";
(() => {
  const toBytes = (text) => {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  };
  const toText = (buffer) => {
    let bin = "";
    for (const byte of new Uint8Array(buffer)) bin += String.fromCharCode(byte);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  const descriptors = (list) => (list || []).map((d) => ({ ...d, id: toBytes(d.id) }));

  const creationOptions = (o) => ({
    ...o,
    challenge: toBytes(o.challenge),
    user: { ...o.user, id: toBytes(o.user.id) },
    excludeCredentials: descriptors(o.excludeCredentials),
  });
  const requestOptions = (o) => ({
    ...o,
    challenge: toBytes(o.challenge),
    allowCredentials: descriptors(o.allowCredentials),
  });

  const asJson = (credential) => {
    const r = credential.response;
    const response = { clientDataJSON: toText(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      if (r.userHandle) response.userHandle = toText(r.userHandle);
    }
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
    };
  };

  const post = async (url, csrf, body, noAnswer) => {
    const headers = { "Content-Type": "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const answer = await fetch(url, {
      method: "POST",
      headers,
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    let data = {};
    try {
      data = await answer.json();
    } catch (_) {
      data = {};
    }
    if (!answer.ok) {
      const error = new Error(data.message || `${noAnswer} (${answer.status})`);
      error.reason = data.reason || data.error || "";
      throw error;
    }
    return data;
  };

  window.didgwWebAuthn = { toBytes, toText, creationOptions, requestOptions, asJson, post };
})();
