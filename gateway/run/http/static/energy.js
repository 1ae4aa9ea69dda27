// didgw: keeps the "Now" card of /energy live with server-sent events (the page works
// without this; it then shows the figures of when it was loaded).
(function () {
  "use strict";
  var card = document.querySelector("[data-energy-stream]");
  if (!card || !window.EventSource) { return; }
  var status = card.querySelector("[data-energy-status]");
  var words = { up: card.dataset.linkUp, down: card.dataset.linkDown, not_read: card.dataset.linkNotRead };
  function two(x) { return x < 10 ? "0" + x : "" + x; }
  function clock(ms) {
    var d = new Date(ms);
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
      two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }
  function set(name, text) {
    var el = card.querySelector('[data-now="' + name + '"]');
    if (el) { el.textContent = text; }
  }
  function kilo(x) { return x === null ? "-" : (x / 1000).toFixed(2); }
  var source = new EventSource(card.dataset.energyStream);
  source.addEventListener("now", function (event) {
    var now = JSON.parse(event.data);
    set("import_kw", kilo(now.import_w));
    set("export_kw", kilo(now.export_w));
    set("today_in", kilo(now.today.import_wh));
    set("today_out", kilo(now.today.export_wh));
    set("cost", (now.today.cost_micro_eur / 1e6).toFixed(2));
    set("income", (now.today.income_micro_eur / 1e6).toFixed(2));
    if (now.last_reading !== null) { set("last", clock(now.last_reading)); }
    now.meters.forEach(function (m) {
      var el = card.querySelector('[data-meter-link="' + m.did + '"]');
      if (el) { el.textContent = words[m.link] || m.link; el.className = "link-state " + m.link; }
    });
    card.dataset.live = "on";
  });
  source.addEventListener("end", function () {
    source.close();
    card.dataset.live = "off";
    status.textContent = card.dataset.ended;
    status.hidden = false;
  });
}());
