// Draw a QR code for every element with a data-qr attribute, as an SVG path (no inline
// style: the CSP allows none). The encoder is the vendored qrcode-generator (vendor/).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const QUIET = 2; // modules of white border around the code
  for (const holder of document.querySelectorAll("[data-qr]")) {
    const code = qrcode(0, "M");
    code.addData(holder.dataset.qr, "Byte");
    code.make();
    const count = code.getModuleCount();
    let d = "";
    for (let row = 0; row < count; row++) {
      for (let col = 0; col < count; col++) {
        if (code.isDark(row, col)) d += `M${col + QUIET} ${row + QUIET}h1v1h-1z`;
      }
    }
    const size = count + 2 * QUIET;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
    svg.setAttribute("class", "qr");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", holder.dataset.qrLabel || "QR code");
    svg.setAttribute("shape-rendering", "crispEdges");
    const background = document.createElementNS(SVG, "rect");
    background.setAttribute("width", String(size));
    background.setAttribute("height", String(size));
    background.setAttribute("fill", "#ffffff");
    const modules = document.createElementNS(SVG, "path");
    modules.setAttribute("d", d);
    modules.setAttribute("fill", "#000000");
    svg.append(background, modules);
    holder.replaceChildren(svg);
  }
})();
