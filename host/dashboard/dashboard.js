// The dashboard's charts: each page embeds its data as JSON (#page-data) and
// this draws it with uPlot (from npm: host/dashboard/package.json). A page of a
// running run polls its JSON and redraws.
"use strict";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

// Series with points at different x onto one x axis, nulls where a series has no point.
function align(chart) {
  const xs = new Set();
  for (const s of chart.series) for (const p of s.points) xs.add(p[0]);
  const x = Array.from(xs).sort((a, b) => a - b);
  const index = new Map(x.map((v, i) => [v, i]));
  const data = [x];
  for (const s of chart.series) {
    const ys = new Array(x.length).fill(null);
    for (const p of s.points) ys[index.get(p[0])] = p[1];
    data.push(ys);
  }
  return data;
}

function seriesOpts(chart) {
  let colour = 0;
  return [{ label: chart.x_label }].concat(chart.series.map((s) => {
    if (s.kind === "target") {
      return { label: s.label, stroke: "#444", dash: [6, 4], width: 1, spanGaps: true, points: { show: false } };
    }
    const stroke = PALETTE[colour++ % PALETTE.length];
    if (s.kind === "points") {
      return { label: s.label, stroke, fill: stroke, paths: () => null, points: { show: true, size: 8, fill: stroke } };
    }
    return { label: s.label, stroke, width: 1.5, spanGaps: true, points: { show: s.points.length < 60 } };
  }));
}

function draw(el, chart) {
  if (typeof uPlot === "undefined") {
    el.textContent = "Charts need uPlot: run `npm ci --prefix host/dashboard` and reload.";
    el.className += " missing";
    return null;
  }
  const opts = {
    title: chart.title,
    width: Math.max(320, el.clientWidth || 800),
    height: 300,
    scales: { x: { time: false }, y: { distr: chart.log_y ? 3 : 1 } },
    axes: [{ label: chart.x_label }, { label: chart.y_label }],
    series: seriesOpts(chart),
  };
  return new uPlot(opts, align(chart), el);
}

function main() {
  const node = document.getElementById("page-data");
  if (!node) return;
  const page = JSON.parse(node.textContent);
  const plots = (page.charts || []).map((c, i) => {
    const el = document.getElementById("chart-" + i);
    return el ? draw(el, c) : null;
  });
  if (!page.live) return;
  const timer = setInterval(async () => {
    try {
      const r = await fetch(page.live);
      const fresh = await r.json();
      fresh.charts.forEach((c, i) => { if (plots[i]) plots[i].setData(align(c)); });
      const status = document.getElementById("live-status");
      if (status) status.textContent = fresh.status;
      if (fresh.status !== "running") clearInterval(timer);
    } catch (e) {
      clearInterval(timer);
    }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", main);
