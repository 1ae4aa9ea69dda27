// didgw: keeps the live counts of /console/health current with server-sent events (the
// page works without this; it then shows the counts of when it was loaded).
(function () {
  "use strict";
  var card = document.querySelector("[data-health-stream]");
  if (!card || !window.EventSource) { return; }
  var status = card.querySelector("[data-live-status]");
  function set(name, value) {
    var el = card.querySelector('[data-count="' + name + '"]');
    if (el && value !== null && value !== undefined) { el.textContent = String(value); }
  }
  var source = new EventSource(card.dataset.healthStream);
  source.addEventListener("counts", function (event) {
    var c = JSON.parse(event.data);
    if (!c.known) { return; }
    set("readings_accepted", c.readings.accepted);
    set("readings_refused", c.readings.refused);
    set("authentications_granted", c.authentications.granted);
    set("authentications_refused", c.authentications.refused);
    if (c.rates) {
      Object.keys(c.rates).forEach(function (k) { set("rate_" + k, c.rates[k].toFixed(1)); });
    }
    card.dataset.live = "on";
  });
  source.addEventListener("end", function () {
    source.close();
    card.dataset.live = "off";
    status.textContent = card.dataset.ended;
    status.hidden = false;
  });
}());
