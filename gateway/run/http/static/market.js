// didgw market: place an order signed with the household's passkey (form[data-market-order]).
// The gateway writes the order and asks the passkey to sign its SHA-256; this page checks
// that digest itself before asking, so what is signed is the order shown. Uses webauthn.js.
"use strict";
(() => {
  const { requestOptions, asJson, post, toText } = window.didgwWebAuthn;

  const say = (form, text, bad) => {
    const status = form.querySelector("[data-market-status]");
    status.textContent = text;
    status.hidden = false;
    status.classList.toggle("bad", Boolean(bad));
  };

  const canonical = (order) =>
    JSON.stringify(Object.fromEntries(Object.keys(order).sort().map((k) => [k, order[k]])));

  const place = async (form) => {
    const csrf = form.querySelector("input[name=csrf_token]").value;
    const field = (name) => form.elements[name].value;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const prepared = await post("/market/orders/prepare", csrf, {
        household: form.dataset.household,
        side: field("side"),
        interval: Number(field("interval")),
        kwh: field("kwh"),
        price: field("price"),
      }, form.dataset.noAnswer);
      const digest = await crypto.subtle.digest(
        "SHA-256",
        new TextEncoder().encode(canonical(prepared.order)),
      );
      if (toText(digest) !== prepared.options.challenge) {
        throw new Error(form.dataset.mismatch);
      }
      say(form, form.dataset.signing, false);
      const credential = await navigator.credentials.get({
        publicKey: requestOptions(prepared.options),
      });
      const done = await post("/market/orders", csrf, {
        challenge: prepared.options.challenge,
        credential: asJson(credential),
      }, form.dataset.noAnswer);
      window.location.assign(done.next);
    } catch (error) {
      const text =
        error && error.name === "NotAllowedError"
          ? form.dataset.cancelled
          : `${error.message}${error.reason ? ` (${error.reason})` : ""}`;
      say(form, text, true);
    } finally {
      button.disabled = false;
    }
  };

  for (const form of document.querySelectorAll("form[data-market-order]")) {
    if (!(window.PublicKeyCredential && navigator.credentials && window.crypto?.subtle)) continue;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      place(form);
    });
  }
})();
