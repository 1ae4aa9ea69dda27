// didgw passkeys: bind one (button[data-passkey-bind]) and sign in with one
// (button[data-passkey-login]), with the helpers of webauthn.js (loaded before it).
"use strict";
(() => {
  const shared = window.didgwWebAuthn;
  const { creationOptions, requestOptions, asJson } = shared;
  // Every text shown comes from the page (data-* attributes, in the reader's language) or
  // from the gateway's refusal message (in her language too).
  const post = (section, url, csrf, body) =>
    shared.post(url, csrf, body, section.dataset.noAnswer);

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
