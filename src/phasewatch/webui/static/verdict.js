// The verdict of a specimen's specification limits (core/verdict.py through
// /api/specimens/ID/stats): pass / fail / undecided with the fields still needed, and one
// row per limit with its range, the mean and 95 % CI, the %RA against its target and why.

import { $, element } from "./dom.js";
import { plural, sig, unitText } from "./format.js";

const MEASURES = { fractions: "area %", number_density: "number density", mean_ecd: "mean ECD" };

export function verdictText(verdict) {
  if (verdict.verdict === "pass") return "Verdict: PASS, every limit is met at 95 % confidence";
  if (verdict.verdict === "fail") return "Verdict: FAIL, a limit is missed at 95 % confidence";
  const more = verdict.fields_needed ? `: about ${plural(verdict.fields_needed, "more field")} needed`
    : ": more fields cannot settle it";
  return `Verdict: UNDECIDED${more}`;
}

export function showVerdict(stats, labelOf) {
  const verdict = stats.verdict;
  $("verdict").hidden = !verdict || verdict.verdict == null;
  if ($("verdict").hidden) return;
  $("verdict-text").textContent = verdictText(verdict);
  $("verdict-text").className = `verdict verdict-${verdict.verdict}`;
  $("verdict").dataset.verdict = verdict.verdict;
  // One line per limit (a list wraps in a narrow panel where a seven-column table was cut off).
  $("checks").replaceChildren(...verdict.checks.map((c) => {
    const li = element("li", null, `check-${c.verdict}`);
    const unit = c.unit ? ` ${unitText(c.unit)}` : "";
    const ci = c.ci95 == null ? "no CI yet" : `${sig(c.mean)} ± ${sig(c.ci95)}`;
    const ra = c.ra_pct == null ? "" : `, %RA ${c.ra_pct.toFixed(1)} (target ${sig(c.target_ra_pct)})`;
    li.append(`${labelOf(c.class)}, ${MEASURES[c.measure]} ${c.range}${unit}: ${ci}${ra}: `,
      element("strong", c.verdict, "check-verdict"), ` (${c.why})`);
    return li;
  }));
}
