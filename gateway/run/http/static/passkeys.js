// didgw passkeys: bind one (button[data-passkey-bind]) and sign in with one
// (button[data-passkey-login]). The gateway sends WebAuthn options as JSON with base64url
// strings; the browser's API takes and gives ArrayBuffers: the helpers below convert.
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

  // Every text shown comes from the page (data-* attributes, in the reader's language) or
  // from the gateway's refusal message (in her language too).
  const post = async (section, url, csrf, body) => {
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
    if (!answer.ok) throw new Error(data.message || `${section.dataset.noAnswer} (${answer.status})`);
    return data;
  };

  const say = (section, text, bad) => {
    const status = section.querySelector("[data-passkey-status]");
    status.textContent = text;
    status.hidden = false;
    status.classList.toggle("bad", Boolean(bad));
  };

  const reason = (section, error) =>
    error && error.name === "NotAllowedError"
      ? section.dataset.cancelled
      : (error && error.message) || String(error);

  const supported = () => Boolean(window.PublicKeyCredential && navigator.credentials);

  const bind = async (button) => {
    const section = button.closest("[data-passkey-csrf]");
    const csrf = section.dataset.passkeyCsrf;
    if (!supported()) return say(section, section.dataset.unsupported, true);
    button.disabled = true;
    try {
      const options = await post(section, "/passkeys/register/options", csrf);
      const credential = await navigator.credentials.create({
        publicKey: creationOptions(options),
      });
      const nameInput = section.querySelector("[data-passkey-name]");
      await post(section, "/passkeys/register", csrf, {
        challenge: options.challenge,
        credential: asJson(credential),
        name: nameInput ? nameInput.value : "",
      });
      window.location.reload(); // the list shows the new passkey
    } catch (error) {
      say(section, `${section.dataset.notAdded} ${reason(section, error)}`, true);
    } finally {
      button.disabled = false;
    }
  };

  const signIn = async (button) => {
    const section = button.closest("[data-passkey-csrf]");
    const csrf = section.dataset.passkeyCsrf;
    if (!supported()) return say(section, section.dataset.unsupported, true);
    button.disabled = true;
    try {
      const options = await post(section, "/passkeys/login/options", csrf);
      const credential = await navigator.credentials.get({
        publicKey: requestOptions(options),
      });
      const done = await post(section, "/passkeys/login", csrf, {
        challenge: options.challenge,
        credential: asJson(credential),
      });
      window.location.assign(done.next || "/");
    } catch (error) {
      say(section, `${section.dataset.notSignedIn} ${reason(section, error)}`, true);
    } finally {
      button.disabled = false;
    }
  };

  for (const button of document.querySelectorAll("[data-passkey-bind]")) {
    button.addEventListener("click", () => bind(button));
  }
  for (const button of document.querySelectorAll("[data-passkey-login]")) {
    button.addEventListener("click", () => signIn(button));
  }
})();
