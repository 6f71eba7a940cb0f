// The review page's own script: the box overlay, field <-> box selection, keyboard, drawing a box.
// No inline script anywhere (the Content-Security-Policy allows only this file and htmx).
(function () {
  "use strict";
  const root = document.querySelector(".review");
  if (!root) return;
  const items = Array.from(document.querySelectorAll(".item"));
  const boxes = Array.from(document.querySelectorAll(".box"));

  // place each box from its normalized coordinates (element.style is allowed by the CSP)
  for (const box of boxes) {
    const x0 = parseFloat(box.dataset.x0), y0 = parseFloat(box.dataset.y0);
    const x1 = parseFloat(box.dataset.x1), y1 = parseFloat(box.dataset.y1);
    box.style.left = (x0 * 100) + "%";
    box.style.top = (y0 * 100) + "%";
    box.style.width = ((x1 - x0) * 100) + "%";
    box.style.height = ((y1 - y0) * 100) + "%";
    box.title = box.dataset.ref;
  }

  function select(ref, scroll) {
    for (const el of document.querySelectorAll(".selected")) el.classList.remove("selected");
    const item = items.find((i) => i.dataset.ref === ref);
    const own = boxes.filter((b) => b.dataset.ref === ref);
    own.forEach((b) => b.classList.add("selected"));
    if (item) {
      item.classList.add("selected");
      if (scroll === "item") item.scrollIntoView({ block: "nearest" });
    }
    if (own.length && scroll !== "item") own[0].scrollIntoView({ block: "center", behavior: "smooth" });
    return item;
  }

  for (const box of boxes) box.addEventListener("click", () => select(box.dataset.ref, "item").focus());
  for (const item of items) {
    item.addEventListener("focusin", () => select(item.dataset.ref, "box"));
    item.addEventListener("input", () => {
      item.classList.add("edited");
      boxes.filter((b) => b.dataset.ref === item.dataset.ref).forEach((b) => b.classList.add("edited"));
    });
    const reject = item.querySelector("input[name=reject]");
    if (reject) reject.addEventListener("change", () => item.classList.toggle("rejected", reject.checked));
  }

  // keyboard first: j/k move, e edits, x rejects, Esc leaves a field, Shift+Enter releases
  function current() { return items.find((i) => i.classList.contains("selected")) || items[0]; }
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (event.key === "Enter" && event.shiftKey) {
      event.preventDefault();
      document.getElementById("release").requestSubmit();
      return;
    }
    if (event.key === "Escape" && typing) { document.activeElement.blur(); current().focus(); return; }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const index = items.indexOf(current());
    if (event.key === "j" || event.key === "k") {
      const next = items[Math.min(items.length - 1, Math.max(0, index + (event.key === "j" ? 1 : -1)))];
      if (next) { next.focus(); select(next.dataset.ref, "box"); }
      event.preventDefault();
    } else if (event.key === "e") {
      const field = current().querySelector("input:not([type=checkbox]), select");
      if (field) { field.focus(); if (field.select) field.select(); }
      event.preventDefault();
    } else if (event.key === "x") {
      const reject = current().querySelector("input[name=reject]");
      if (reject && !reject.disabled) { reject.checked = !reject.checked; reject.dispatchEvent(new Event("change")); }
      event.preventDefault();
    }
  });

  // draw a box for a finding the extractor missed: press, drag, release on a page
  const drawButton = document.getElementById("draw");
  let drawing = false, start = null, shape = null;
  if (drawButton) drawButton.addEventListener("click", () => { drawing = true; root.classList.add("drawing"); });
  for (const page of document.querySelectorAll(".page")) {
    page.addEventListener("pointerdown", (event) => {
      if (!drawing) return;
      event.preventDefault();
      const rect = page.getBoundingClientRect();
      start = { x: (event.clientX - rect.left) / rect.width, y: (event.clientY - rect.top) / rect.height, page };
      if (shape) shape.remove();
      shape = document.createElement("div");
      shape.className = "box drawn";
      page.appendChild(shape);
    });
    page.addEventListener("pointermove", (event) => {
      if (!drawing || !start || start.page !== page) return;
      const rect = page.getBoundingClientRect();
      const x = (event.clientX - rect.left) / rect.width, y = (event.clientY - rect.top) / rect.height;
      shape.style.left = Math.min(x, start.x) * 100 + "%";
      shape.style.top = Math.min(y, start.y) * 100 + "%";
      shape.style.width = Math.abs(x - start.x) * 100 + "%";
      shape.style.height = Math.abs(y - start.y) * 100 + "%";
    });
    page.addEventListener("pointerup", (event) => {
      if (!drawing || !start) return;
      const rect = page.getBoundingClientRect();
      const x = (event.clientX - rect.left) / rect.width, y = (event.clientY - rect.top) / rect.height;
      const clamp = (v) => Math.max(0, Math.min(1, v)).toFixed(4);
      document.getElementById("add_page").value = page.dataset.page;
      document.getElementById("add_box").value =
        [Math.min(x, start.x), Math.min(y, start.y), Math.max(x, start.x), Math.max(y, start.y)].map(clamp).join(",");
      document.getElementById("drawn").textContent = "Box drawn on page " + page.dataset.page + ".";
      drawing = false; start = null; root.classList.remove("drawing");
    });
  }
})();
