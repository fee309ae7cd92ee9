// A specimen's statistics (templates/_stats.html): choose the class; its area % per field
// with the running mean, 95 % CI band and target accuracy; the running %RA against the
// target; its particle size histogram; the ASTM E562 / E1245 tables with units; and the
// verdict of its specification limits (verdict.js).

import { drawOnResize, histogramChart, raChart, trendChart } from "./chart.js";
import { $, element, swatch } from "./dom.js";
import { fixed, plural, sig, unitText } from "./format.js";
import { showVerdict } from "./verdict.js";

function classCell(c) {
  const cell = element("td");
  cell.append(swatch(c.colour), document.createTextNode(c.label));
  return cell;
}

function row(c, s, columns, main) {
  const tr = element("tr", null, main ? "main" : "");
  tr.dataset.class = c.name;
  tr.append(classCell(c));
  for (const [text, cls] of columns(s)) tr.append(element("td", text, cls));
  return tr;
}

const fractionColumns = (s) => [
  [String(s.n), "n"], [fixed(s.mean), "mean"], [fixed(s.std), "std"], [fixed(s.ci95), "ci"],
  [fixed(s.ra_pct, 1), "ra"], [s.fields_needed == null ? "–" : String(s.fields_needed), "needed"],
  [fixed(s.weighted_mean), "weighted"],
];
const quantityColumns = (s) => [
  [String(s.n), "n"], [sig(s.mean), "mean"], [sig(s.std), "std"], [sig(s.ci95), "ci"], [fixed(s.ra_pct, 1), "ra"],
  [sig(s.weighted_mean), "weighted"],
];

export class StatsView {
  constructor() {
    this.stats = null;
    this.chosen = null;
    $("stats-class").addEventListener("change", () => {
      this.chosen = $("stats-class").value;
      this.render();
    });
  }

  show(stats) {
    this.stats = stats;
    const names = Object.keys(stats.fractions);
    if (!names.includes(this.chosen)) this.chosen = stats.main_phase || names[0] || null;
    const select = $("stats-class");
    select.replaceChildren(...this.classes().filter((c) => names.includes(c.name)).map((c) => {
      const option = element("option", c.label);
      option.value = c.name;
      return option;
    }));
    select.disabled = names.length === 0;
    if (this.chosen) select.value = this.chosen;
    this.render();
  }

  // Classes in the model's order, with display names and colours (the API's legend).
  classes() {
    const known = new Map(this.stats.classes.map((c) => [c.name, c]));
    for (const name of Object.keys(this.stats.fractions)) {
      if (!known.has(name)) known.set(name, { name, label: name, colour: null });
    }
    return [...known.values()];
  }

  render() {
    const stats = this.stats;
    const classes = this.classes();
    const byName = new Map(classes.map((c) => [c.name, c]));
    const chosen = byName.get(this.chosen);
    const target = stats.target_ra_pct;
    const trend = this.chosen ? stats.trends[this.chosen] : null;
    if (trend && trend.values.length) {
      drawOnResize($("trend"), () => trendChart($("trend"), { ...trend, targetRaPct: target, name: chosen.label }));
      const ra = trend.mean.map((m, i) => (trend.ci95[i] == null || m <= 0 ? null : (100 * trend.ci95[i]) / m));
      drawOnResize($("ra-chart"), () => raChart($("ra-chart"), { ra, targetRaPct: target }));
      const s = stats.fractions[this.chosen];
      const last = trend.values.length - 1;
      $("trend-caption").textContent = `${chosen.label}: area % of each counted field (click a dot to open it), ` +
        `running mean ${fixed(trend.mean[last])} %` +
        (trend.ci95[last] == null ? " (a CI needs two fields)" : ` ± ${fixed(trend.ci95[last])} (95 % CI)`) +
        `; dashed: ± ${sig(target)} % of the mean, the target.`;
      $("ra-caption").textContent = s.ra_pct == null ? `Relative accuracy: needs two fields; target ${sig(target)} %.`
        : `Relative accuracy ${fixed(s.ra_pct, 1)} % after ${plural(s.n, "field")}; target ${sig(target)} %` +
          (s.fields_needed ? `: about ${plural(s.fields_needed, "more field")} needed.` : ": reached.");
    } else {
      $("trend").replaceChildren();
      $("ra-chart").replaceChildren();
      $("trend-caption").textContent = "No fields counted yet.";
      $("ra-caption").textContent = "";
    }
    const histogram = this.chosen ? stats.ecd_histograms[this.chosen] : null;
    $("histogram-figure").hidden = !histogram;
    if (histogram) {
      const unit = unitText(histogram.unit);
      drawOnResize($("histogram"), () => histogramChart($("histogram"), { ...histogram, unit }));
      const total = histogram.counts.reduce((a, b) => a + b, 0);
      $("histogram-caption").textContent = `${chosen.label}: sizes of ${plural(total, "whole particle")} ` +
        `(equivalent circle diameter, ${unit}; bins grow by √2; border particles left out).`;
    }
    const ordered = classes.filter((c) => c.name in stats.fractions);
    const main = (c) => c.name === stats.main_phase;
    $("stats").tBodies[0].replaceChildren(...ordered.map((c) => row(c, stats.fractions[c.name], fractionColumns, main(c))));
    const table = (id, quantity, caption) => {
      const names = classes.filter((c) => c.name in stats[quantity]);
      $(id).tBodies[0].replaceChildren(...names.map((c) => row(c, stats[quantity][c.name], quantityColumns, main(c))));
      const unit = names.length ? unitText(stats[quantity][names[0].name].unit) : "";
      $(`${id}-caption`).textContent = `${caption}${unit ? `, ${unit}` : ""}`;
      $(id).hidden = names.length === 0;
    };
    table("density", "number_density", "Number density (ASTM E1245)");
    table("ecd", "mean_ecd", "Mean equivalent circle diameter (ASTM E1245)");
    const n = stats.flagged_pending;
    const [fields, them] = n === 1 ? ["1 field outside the model's experience is", "it"]
      : [`${n} fields outside the model's experience are`, "them"];
    $("flagged-note").textContent = stats.count_flagged ? `${fields} counted although nobody has accepted ${them}.`
      : `${fields} not counted until someone accepts ${them}.`;
    $("flagged-note").hidden = !n;
    showVerdict(stats, (name) => (byName.get(name) || { label: name }).label);
  }
}
