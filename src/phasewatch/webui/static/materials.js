// Materials (class sets: a bundled model's classes, or one people made) as the pages
// pick them: a <select> of the known ones (GET /api/materials) and the dialog that
// makes a new one (POST /api/materials: names, colours, role phase / background /
// excluded, e.g. a data bar). The last one picked is offered again.

import { api, postJson } from "./api.js";
import { $, element, showError } from "./dom.js";

const LAST_KEY = "phasewatch.material";
const NEW_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
export const WHO_KEY = "phasewatch.who"; // the operator's name, offered again (as for accepting a field)

export async function fetchMaterials() {
  return (await api("/api/materials")).materials;
}

export class MaterialPicker {
  // select: the <select>; onPick(material): a material was chosen (also on load).
  constructor(select, onPick) {
    this.select = select;
    this.onPick = onPick;
    this.list = [];
    select.addEventListener("change", () => this.picked());
    const newButton = $("material-new");
    if (newButton) {
      newButton.addEventListener("click", () => this.openDialog());
      $("material-add-class").addEventListener("click", () => this.addRow());
      $("material-cancel").addEventListener("click", () => $("material-dialog").close());
      $("material-form").addEventListener("submit", (event) => this.create(event));
    }
  }

  // Fill the list; pick `preferred` if it is a material (a field's model), else the last one picked.
  async load(preferred = null) {
    this.list = await fetchMaterials();
    this.select.replaceChildren(...this.list.map((m) => {
      const option = element("option", `${m.name} (${m.classes.length} classes${m.source === "bundled" ? ", bundled" : ""})`);
      option.value = m.name;
      return option;
    }));
    const names = new Set(this.list.map((m) => m.name));
    const last = localStorage.getItem(LAST_KEY);
    const chosen = [last, preferred].find((name) => name && names.has(name)) || (this.list[0] || {}).name;
    if (chosen) this.select.value = chosen;
    await this.picked();
  }

  get current() {
    return this.list.find((m) => m.name === this.select.value) || null;
  }

  // Show `name` as chosen without picking it (a pick the editor refused).
  choose(name) {
    this.select.value = name;
  }

  async picked() {
    const material = this.current;
    if (!material) return;
    localStorage.setItem(LAST_KEY, material.name);
    await this.onPick(material);
  }

  // -- a new material ------------------------------------------------------------------

  openDialog() {
    const form = $("material-form");
    form.reset();
    $("material-class-rows").replaceChildren();
    this.addRow("matrix", "background");
    this.addRow("", "phase");
    showError($("material-error"), null);
    $("material-dialog").showModal();
  }

  addRow(name = "", role = "phase") {
    const rows = $("material-class-rows");
    const n = rows.children.length;
    const item = element("li", null, "material-class");
    const nameInput = element("input");
    Object.assign(nameInput, { type: "text", required: true, maxLength: 64, value: name, placeholder: "class name" });
    nameInput.setAttribute("aria-label", `class ${n + 1} name`);
    const colour = element("input");
    Object.assign(colour, { type: "color", value: NEW_COLOURS[n % NEW_COLOURS.length] });
    colour.setAttribute("aria-label", `class ${n + 1} colour`);
    const roleSelect = element("select");
    roleSelect.setAttribute("aria-label", `class ${n + 1} role`);
    for (const [value, text] of [["phase", "phase"], ["background", "background (not a phase)"],
      ["excluded", "excluded (e.g. a data bar)"]]) {
      const option = element("option", text);
      option.value = value;
      roleSelect.append(option);
    }
    roleSelect.value = role;
    const remove = element("button", "Remove");
    remove.type = "button";
    remove.addEventListener("click", () => item.remove());
    item.append(nameInput, colour, roleSelect, remove);
    rows.append(item);
    nameInput.focus();
  }

  async create(event) {
    event.preventDefault();
    const form = event.target;
    const classes = [...$("material-class-rows").children].map((item) => {
      const [name, colour, role] = item.querySelectorAll("input, select");
      return { name: name.value.trim(), colour: colour.value, role: role.value };
    });
    const name = form.elements.namedItem("name").value.trim();
    try {
      await postJson("/api/materials", { name, classes, who: localStorage.getItem(WHO_KEY) || "" });
      localStorage.setItem(LAST_KEY, name);
      $("material-dialog").close();
      await this.load(name);
    } catch (err) {
      showError($("material-error"), err);
    }
  }
}
