// Shows the Measure node's report (its `text` UI output) on the node itself: ComfyUI's
// frontend displays text only for nodes an extension teaches it to (core does the same for
// Preview Any). Uses the frontend's own text-preview widget when it exposes one.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODE = "AdvDMMeasure";
const core = window.comfyAPI?.textPreviewWidgets;

function addReport(node) {
  if (core?.addTextPreviewWidgets) {
    core.addTextPreviewWidgets(node);
    return;
  }
  const w = ComfyWidgets.STRING(node, "report", ["STRING", { multiline: true }], app).widget;
  w.inputEl.readOnly = true;
  w.serialize = false;  // not a node input: keeps widgets_values in step with the inputs
  w.options.serialize = false;
}

function showReport(node, output) {
  if (!output?.text) return;
  if (core?.updateTextPreviewWidgets) {
    core.updateTextPreviewWidgets(node, output);
  } else {
    const w = node.widgets?.find((w) => w.name === "report");
    if (w) w.value = [].concat(output.text).join("\n\n");
  }
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "advdm.MeasureReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      created?.apply(this, arguments);
      addReport(this);
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
      if (node?.type === NODE) showReport(node, output);
    }
  },
});
