// The report (a node's `text` UI output) in a read-only text area on the Measure and Mimicry
// Check nodes: ComfyUI's frontend shows text only where an extension puts it. Only the public
// extension API is used (app.registerExtension, node.addDOMWidget), nothing from the
// frontend's internal modules.
import { app } from "../../scripts/app.js";

const NODES = new Set(["AdvDMMeasure", "AdvDMMimicry"]);

function reportArea(node) {
  const known = node.widgets?.find((w) => w.name === "report");
  if (known) return known;
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.spellcheck = false;
  area.placeholder = "The report appears here after a Run.";
  area.className = "advdm-report";
  Object.assign(area.style, {
    width: "100%", height: "100%", boxSizing: "border-box", resize: "none", padding: "4px",
    font: "11px/1.35 monospace", whiteSpace: "pre-wrap", color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)", border: "1px solid var(--border-color, #444)", borderRadius: "4px",
  });
  // not a node input: kept out of widgets_values, so saved workflows stay in step with the inputs
  return node.addDOMWidget("report", "advdm_report", area, {
    serialize: false,
    getValue: () => area.value,
    setValue: (v) => { area.value = v ?? ""; },
    getMinHeight: () => 150,
  });
}

function showReport(node, output) {
  if (!output?.text) return;
  reportArea(node).value = [].concat(output.text).join("\n\n");
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "advdm.Report",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      reportArea(this);
      return r;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      executed?.apply(this, arguments);
      showReport(this, output);
    };
  },
  // outputs restored after a reload or a tab switch
  onNodeOutputsUpdated(outputs) {
    for (const [id, output] of Object.entries(outputs ?? {})) {
      const node = app.graph?.getNodeById?.(Number(id));
      if (NODES.has(node?.type)) showReport(node, output);
    }
  },
});
