// The rounds dashboard: polls /v1/status, /v1/rounds and /v1/evaluations and redraws
// the SVG charts (FedkbCharts, charts.js) every few seconds.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const $ = (id) => document.getElementById(id);
  const svg = (name) => document.querySelector(`[data-chart="${name}"] svg`);
  const sum = (d) => Object.values(d || {}).reduce((a, b) => a + b, 0);
  const pct = (v) => `${(100 * v).toFixed(0)}%`;

  async function getJson(url) {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    return resp.json();
  }

  function summary(s) {
    $("s-version").textContent = s.model_version === null ? "–" : s.model_version;
    $("s-committed").textContent = s.rounds_committed;
    $("s-abandoned").textContent = s.rounds_abandoned;
    $("s-training").textContent = s.training;
    const cur = s.current_round;
    $("s-current").textContent = cur ? `${cur.id}: ${cur.reported}/${cur.goal} reported` : "none";
    $("s-devices").textContent = Object.entries(s.devices || {})
      .map(([k, v]) => `${v} ${k}`).join(", ");
    $("s-privacy").textContent = privacyText(s.privacy);
    $("s-updated").textContent = new Date().toLocaleTimeString();
    const comm = s.communication || {};
    $("s-encoding").textContent = `uplink ${comm.encoding || "float32"}, ` +
      `downlink ${comm.downlink || "float32"}`;
  }

  function privacyText(p) {
    if (!p) return "off";
    const eps = p.epsilon === null ? "∞ (z = 0)" : p.epsilon.toFixed(2);
    const delta = p.delta === null ? "–" : p.delta.toExponential(0);
    let text = `${eps} at ${delta}, ${p.rounds} rounds (${p.mechanism})`;
    if (p.hypothetical_population) {
      const h = p.hypothetical_population;
      text += `; hypothetical population ${h.noise_cohort}/round: ` +
        (h.epsilon === null ? "∞" : h.epsilon.toFixed(2));
    }
    if (p.stopped) text += `; stopped: ${p.stopped.reason}`;
    return text;
  }

  function charts(rounds, evaluations) {
    // Closed training rounds (an open one's counters are still moving: see the table).
    const train = rounds.filter((r) => r.kind === "train" && r.closed_at !== null)
      .sort((a, b) => a.id - b.id);
    const pts = (f) => train.map((r) => [r.id, f(r)]);
    FedkbCharts.lineChart(svg("participants"), {
      xLabel: "round",
      series: [
        { name: "selected", color: "#8aa4c8", points: pts((r) => r.selected) },
        { name: "reported", color: "#1f6feb", points: pts((r) => r.reported) },
        { name: "goal", color: "#999999", points: pts((r) => r.goal) },
      ],
    });
    FedkbCharts.lineChart(svg("failures"), {
      xLabel: "round",
      series: [
        { name: "aborted", color: "#d1242f", points: pts((r) => sum(r.aborted)) },
        { name: "late", color: "#bf8700", points: pts((r) => r.late) },
        { name: "rejected", color: "#8250df", points: pts((r) => sum(r.rejected)) },
      ],
    });
    const evals = evaluations.slice().sort((a, b) => a.model_version - b.model_version);
    const ev = (key) => evals.filter((e) => typeof e[key] === "number")
      .map((e) => [e.model_version, e[key]]);
    FedkbCharts.lineChart(svg("recall"), {
      xLabel: "model version", yMin: 0, yFormat: pct,
      empty: "no evaluation rounds yet",
      series: [
        { name: "top-1 recall", color: "#1a7f37", points: ev("top1_recall") },
        { name: "top-3 recall", color: "#1f6feb", points: ev("top3_recall") },
      ],
    });
    const loss = train.filter((r) => r.metrics && typeof r.metrics.loss === "number");
    FedkbCharts.lineChart(svg("loss"), {
      xLabel: "round", yFormat: (v) => v.toFixed(2),
      series: [{ name: "loss", color: "#cf222e",
                 points: loss.map((r) => [r.id, r.metrics.loss]) }],
    });
    // ε after each DP round (null: z = 0, no guarantee, not drawn)
    const dp = train.filter((r) => r.privacy && typeof r.privacy.epsilon === "number");
    const hyp = train.filter((r) => r.privacy &&
      typeof r.privacy.hypothetical_epsilon === "number");
    const series = [{ name: "epsilon", color: "#8250df",
                      points: dp.map((r) => [r.id, r.privacy.epsilon]) }];
    if (hyp.length) {
      series.push({ name: "hypothetical population", color: "#bf8700",
                    points: hyp.map((r) => [r.id, r.privacy.hypothetical_epsilon]) });
    }
    FedkbCharts.lineChart(svg("epsilon"), {
      xLabel: "round", yMin: 0, yFormat: (v) => v.toFixed(1),
      empty: "no differential privacy on this server", series,
    });
    const mb = (b) => b / 1e6;
    FedkbCharts.lineChart(svg("bytes"), {
      xLabel: "round", yMin: 0, yFormat: (v) => v.toFixed(1),
      series: [
        { name: "up", color: "#1f6feb",
          points: pts((r) => mb((r.upload_bytes || []).reduce((a, b) => a + b, 0))) },
        { name: "down", color: "#1a7f37", points: pts((r) => mb(r.download_bytes || 0)) },
      ],
    });
  }

  function table(rounds) {
    const body = document.querySelector("#rounds tbody");
    body.textContent = "";
    rounds.slice(0, 15).forEach((r) => {
      const tr = document.createElement("tr");
      tr.className = `round-${r.state}`;
      const version = r.kind === "train" ? (r.committed_version ?? "") : r.base_version;
      [r.id, r.kind, r.state, version, r.selected, r.reported, sum(r.aborted), r.late,
       r.reason || ""].forEach((v) => {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  async function refresh() {
    try {
      const [s, r, e] = await Promise.all([
        getJson("/v1/status"), getJson("/v1/rounds?limit=500"), getJson("/v1/evaluations")]);
      summary(s);
      charts(r.rounds, e.evaluations);
      table(r.rounds);
      $("error").hidden = true;
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    } catch (err) {
      $("error").textContent = `refresh failed: ${err}`;
      $("error").hidden = false;
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
