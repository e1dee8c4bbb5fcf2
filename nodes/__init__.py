"""ComfyUI nodes of the pack. comfy_nodes imports ComfyUI; the other modules do not."""
