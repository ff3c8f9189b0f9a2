// The usage chart: the only script of the console. It reads the series the server put in
// #usage-chart's data-series attribute (the getMeterEventsSeries answer, already on the page as
// a table too) and draws it with uPlot (vendored next to this file). No inline script: CSP
// script-src 'self'.
"use strict";
(function () {
  function draw() {
    var el = document.getElementById("usage-chart");
    if (!el || typeof uPlot === "undefined") return;
    var data = JSON.parse(el.dataset.series);
    var xs = data.start.map(function (t) { return Date.parse(t) / 1000; });
    var width = Math.max(280, el.clientWidth);
    var opts = {
      width: width,
      height: Math.round(Math.min(320, Math.max(180, width * 0.45))),
      series: [
        {},
        { label: data.meter + " (" + data.aggregation + ")", stroke: "#2f6fde", fill: "rgba(47,111,222,0.12)", width: 2 },
      ],
      axes: [{}, { size: 60 }],
      scales: { x: { time: true } },
    };
    el.textContent = "";
    var chart = new uPlot(opts, [xs, data.value], el);
    el.dataset.drawn = String(xs.length);  // how many windows were drawn: what the browser test reads
    window.addEventListener("resize", function () {
      chart.setSize({ width: Math.max(280, el.clientWidth), height: opts.height });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
