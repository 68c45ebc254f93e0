// One cursor across every time chart: hovering over any of them moves it
// in all, and each legend reads its series at that interval. Intervals
// run on from data-first without a gap (the merger makes a row of every
// interval any agent reported), so the k-th value is interval first + k.
(function () {
  "use strict";
  var charts = Array.prototype.slice.call(document.querySelectorAll('svg[data-kind="time"]'));
  var read = 0;
  var values = charts.map(function (svg) {
    return Array.prototype.map.call(svg.querySelectorAll("[data-values]"), function (el) {
      read += 1;
      return el.getAttribute("data-values").split(" ");
    });
  });
  // Says the script ran, and how many series it read.
  document.documentElement.setAttribute("data-series-read", String(read));
  function num(a, name) { return Number(a.getAttribute(name)); }
  function secs(v) { return String(Number(v.toFixed(3))); }
  function show(k) {
    charts.forEach(function (svg, c) {
      var fig = svg.parentNode;
      var cursor = svg.querySelector(".cursor");
      var at = fig.querySelector(".at");
      var out = fig.querySelectorAll(".legend b");
      var n = num(svg, "data-n");
      var i;
      if (k < 0 || k >= n) {
        cursor.style.visibility = "hidden";
        if (at) { at.textContent = ""; }
        for (i = 0; i < out.length; i += 1) { out[i].textContent = ""; }
        return;
      }
      var x0 = num(svg, "data-x0"), x1 = num(svg, "data-x1"), t1 = num(svg, "data-t1");
      var dt = num(svg, "data-dt"), first = num(svg, "data-first");
      var x = x0 + (x1 - x0) * ((first + k + 0.5) * dt) / t1;
      cursor.setAttribute("x1", x);
      cursor.setAttribute("x2", x);
      cursor.style.visibility = "visible";
      if (at) { at.textContent = secs((first + k) * dt) + "\u2013" + secs((first + k + 1) * dt) + " s"; }
      var unit = svg.getAttribute("data-unit") || "";
      for (i = 0; i < out.length && i < values[c].length; i += 1) {
        var v = values[c][i][k];
        out[i].textContent = v === undefined || v === "-" ? "\u2013" : v + unit;
      }
    });
  }
  charts.forEach(function (svg) {
    svg.addEventListener("mousemove", function (e) {
      var r = svg.getBoundingClientRect();
      var vx = (e.clientX - r.left) * svg.viewBox.baseVal.width / r.width;
      var x0 = num(svg, "data-x0"), x1 = num(svg, "data-x1"), t1 = num(svg, "data-t1");
      var t = (vx - x0) / (x1 - x0) * t1;
      show(Math.floor(t / num(svg, "data-dt")) - num(svg, "data-first"));
    });
    svg.addEventListener("mouseleave", function () { show(-1); });
  });
}());
