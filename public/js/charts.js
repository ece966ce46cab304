// The three charts. Chart.js, its date adapter and the financial plugin are loaded as classic scripts
// from vendor/ (installed from npm by the set-up) and found on window.Chart.

const Chart = window.Chart;
const WINDOW_POINTS = 600;  // per symbol: a minute at ten ticks a second
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
const INTERVAL_MS = { "1s": 1000, "1m": 60000, "5m": 300000, "1h": 3600000 };

function textColor() {
  return getComputedStyle(document.documentElement).getPropertyValue("--muted").trim() || "#666";
}

function baseOptions() {
  const color = textColor();
  return {
    animation: false,  // 20 symbols at 10 ticks a second: no tweening
    responsive: true,
    maintainAspectRatio: false,
    parsing: false,
    normalized: true,
    plugins: { legend: { labels: { color, boxWidth: 10 } } },
    scales: {
      x: {
        type: "time",
        time: { displayFormats: { millisecond: "HH:mm:ss", second: "HH:mm:ss", minute: "HH:mm", hour: "HH:mm" } },
        ticks: { color, maxRotation: 0, autoSkipPadding: 24 },
        grid: { display: false },
      },
      y: { ticks: { color } },
    },
  };
}

export class PriceChart {
  constructor(canvas, container) {
    this.container = container;
    this.series = new Map();  // symbol -> {data, base}
    this.chart = new Chart(canvas, { type: "line", data: { datasets: [] }, options: baseOptions() });
    this.chart.options.elements = { point: { radius: 0 }, line: { borderWidth: 1.5 } };
  }

  show(symbols) {
    const keep = new Set(symbols);
    for (const symbol of [...this.series.keys()]) if (!keep.has(symbol)) this.series.delete(symbol);
    symbols.forEach((symbol) => { if (!this.series.has(symbol)) this.series.set(symbol, { data: [], base: null }); });
    this.rebuild();
  }

  get normalised() { return this.series.size > 1; }

  rebuild() {
    this.chart.data.datasets = [...this.series.entries()].map(([symbol, s], i) => ({
      label: symbol,
      data: s.data.map((p) => ({ x: p.x, y: this.normalised ? 100 * (p.y / s.base - 1) : p.y })),
      borderColor: PALETTE[i % PALETTE.length],
      backgroundColor: PALETTE[i % PALETTE.length],
    }));
    document.getElementById("prices-mode").textContent = this.normalised ? "% change" : "price";
    this.chart.update("none");
  }

  add(ticks) {
    let added = 0;
    for (const t of ticks) {
      const s = this.series.get(t.symbol);
      if (!s) continue;
      if (s.base === null) s.base = t.price;
      s.data.push({ x: t.ts / 1e6, y: t.price });
      if (s.data.length > WINDOW_POINTS) s.data.splice(0, s.data.length - WINDOW_POINTS);
      added += 1;
    }
    if (!added) return;
    this.rebuild();
    const points = [...this.series.values()].reduce((n, s) => n + s.data.length, 0);
    this.container.dataset.points = String(points);
  }
}

export class CandleChart {
  constructor(canvas, container) {
    this.container = container;
    this.symbol = null;
    this.interval = "1s";
    this.candles = [];
    const options = baseOptions();
    options.plugins.legend = { display: false };
    options.scales.y = { position: "right", ticks: { color: textColor() } };
    options.scales.volume = { position: "left", display: false, grid: { display: false }, max: undefined };
    this.chart = new Chart(canvas, {
      type: "candlestick",
      data: { datasets: [
        { label: "OHLC", data: [] },
        { type: "bar", label: "volume", data: [], yAxisID: "volume", backgroundColor: "rgba(127,127,127,0.35)" },
      ] },
      options,
    });
  }

  async load(symbol, interval) {
    this.symbol = symbol;
    this.interval = interval;
    const span = INTERVAL_MS[interval] * 120;
    const start = new Date(Date.now() - span).toISOString();
    const url = `history/candles?symbol=${encodeURIComponent(symbol)}&interval=${interval}&start=${start}&limit=500`;
    const response = await fetch(url);
    if (!response.ok) return;
    const body = await response.json();
    if (this.symbol !== symbol || this.interval !== interval) return;  // a newer choice won
    this.candles = body.candles.map((c) => ({ x: c.start / 1e6, o: c.open, h: c.high, l: c.low, c: c.close, v: c.volume }));
    this.render();
  }

  add(ticks) {
    const width = INTERVAL_MS[this.interval];
    let changed = false;
    for (const t of ticks) {
      if (t.symbol !== this.symbol) continue;
      const x = Math.floor(t.ts / 1e6 / width) * width;
      const last = this.candles[this.candles.length - 1];
      if (last && last.x === x) {
        last.h = Math.max(last.h, t.price); last.l = Math.min(last.l, t.price); last.c = t.price; last.v += t.size;
      } else if (!last || x > last.x) {
        this.candles.push({ x, o: t.price, h: t.price, l: t.price, c: t.price, v: t.size });
        if (this.candles.length > 500) this.candles.shift();
      }
      changed = true;
    }
    if (changed) this.render();
  }

  render() {
    this.chart.data.datasets[0].data = this.candles;
    this.chart.data.datasets[1].data = this.candles.map((c) => ({ x: c.x, y: c.v }));
    const maxVolume = Math.max(1, ...this.candles.map((c) => c.v));
    this.chart.options.scales.volume.max = maxVolume * 4;  // volume bars in the bottom quarter
    this.chart.update("none");
    this.container.dataset.candles = String(this.candles.length);
  }
}

export class VolChart {
  constructor(canvas) {
    const options = baseOptions();
    options.scales.x = { type: "category", ticks: { color: textColor(), autoSkip: false, maxRotation: 90 } };
    options.scales.y = { ticks: { color: textColor(), callback: (v) => `${Math.round(v * 100)}%` }, beginAtZero: true };
    options.plugins.legend = { display: false };
    options.parsing = true;
    this.vols = new Map();
    this.chart = new Chart(canvas, { type: "bar", data: { labels: [], datasets: [{ data: [], backgroundColor: "#7c3aed" }] }, options });
  }

  add(ticks) {
    for (const t of ticks) this.vols.set(t.symbol, t.vol);
    this.chart.data.labels = [...this.vols.keys()];
    this.chart.data.datasets[0].data = [...this.vols.values()];
    this.chart.update("none");
  }
}
