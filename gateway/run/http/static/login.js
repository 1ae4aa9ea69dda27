// The sign-in page: ask once every 1.5 s whether the wallet has answered, then finish.
// No inline script (the CSP forbids it); without JavaScript the button does the same.
"use strict";
(function () {
  const status = document.getElementById("login-status");
  const form = document.getElementById("login-finish");
  if (!status || !form) return;
  const url = status.dataset.status;
  async function poll() {
    let answer;
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      answer = await response.json();
    } catch (e) {
      setTimeout(poll, 3000);
      return;
    }
    if (answer.status === "waiting") {
      setTimeout(poll, 1500);
    } else if (answer.status === "expired") {
      status.textContent = status.dataset.expired;
    } else {
      status.textContent = answer.status === "done" ? status.dataset.done : status.dataset.refused;
      form.submit();
    }
  }
  setTimeout(poll, 1500);
})();
