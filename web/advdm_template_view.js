// This pack's templates open where their notes can be read. The template browser fits the
// whole graph into the window (it ignores a template's saved view), which for a wide graph
// is a zoom where no text is drawn. A template of this pack carries its view in
// extra.advdm_view ({scale, offset}, as extra.ds); after the graph is configured (and fitted)
// this puts that view back, once: the key is dropped, so a workflow saved from the template
// opens like any other.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "advdm.TemplateView",
  async afterConfigureGraph() {
    const view = app.graph?.extra?.advdm_view;
    if (!view) return;
    delete app.graph.extra.advdm_view;
    const ds = app.canvas?.ds;
    if (!ds) return;
    ds.scale = view.scale;
    ds.offset = [...view.offset];
    app.canvas.setDirty(true, true);
  },
});
