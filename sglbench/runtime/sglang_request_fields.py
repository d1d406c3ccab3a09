"""SGLang's GenerateReqInput fields that this engine does not act on, shared by `sglbench serve` and `sgl.Engine`:
those refused unless off (with the reason), and those that only label a request. Torch-free."""

from __future__ import annotations

from typing import Any

_TEXT_ONLY = "this engine serves text-only models"
_ONE_PROCESS = "this engine is one process (no prefill/decode disaggregation, no data-parallel ranks)"
_NOT_REPORTED = "this engine does not report it"

# GenerateReqInput fields accepted only while off (null, false, 0, empty); the reason why each is refused when set.
UNSUPPORTED_WHEN_SET: dict[str, str] = {
    "input_embeds": "prompts are text or token ids here",
    **dict.fromkeys(("image_data", "video_data", "audio_data", "modalities", "mm_hashes", "mm_content_hashes",
                     "use_audio_in_video", "video_config", "max_dynamic_patch", "min_dynamic_patch",
                     "image_max_dynamic_patch", "video_max_dynamic_patch", "images_config", "mm_processor_kwargs",
                     "need_wait_for_mm_inputs", "num_items_assigned", "encoder_urls"), _TEXT_ONLY),
    **dict.fromkeys(("lora_path", "lora_id"), "LoRA adapters are not supported"),
    "custom_logit_processor": "custom logit processors are not supported",
    "positional_embed_overrides": "embedding overrides are not supported",
    **dict.fromkeys(("bootstrap_host", "bootstrap_port", "bootstrap_room", "bootstrap_pair_key", "decode_tp_size",
                     "disagg_prefill_dp_rank", "routed_dp_rank", "data_parallel_rank", "kv_hints"), _ONE_PROCESS),
    "session_params": "sessions (continued prompts) are not supported",
    **dict.fromkeys(("return_hidden_states", "return_routed_experts", "routed_experts_start_len",
                     "return_indexer_topk", "return_entropy", "return_sampling_mask", "sampling_logprobs_mode",
                     "return_flat_raw_top_logprobs", "return_flat_raw_output_top_logprobs",
                     "return_flat_raw_top_logprobs_b64", "return_prompt_token_ids", "return_bytes"), _NOT_REPORTED),
    "watermark": "watermarking is not supported",
    **dict.fromkeys(("require_reasoning", "max_thinking_tokens"), "reasoning budgets are not supported"),
    "priority": "requests are scheduled by the cache-aware policy, without priorities",
    **dict.fromkeys(("extra_key", "cache_salt"), "every request shares one radix cache (no cache namespaces)"),
    **dict.fromkeys(("multi_item_delimiter_indices", "token_indices_to_pool"), "multi-item scoring is not supported"),
    "background": "background responses are not supported",
}

# GenerateReqInput fields that only label, trace or log a request: accepted with any value, without effect here.
PASSIVE_FIELDS = ("session_id", "log_metrics", "routing_key", "conversation_id", "http_worker_ipc", "no_logs",
                  "custom_labels", "external_trace_header", "received_time")


def is_off(value: Any) -> bool:
    """Whether a GenerateReqInput value asks for nothing: null, false, 0, empty, or a list/dict of those."""
    if isinstance(value, (list, tuple)):
        return all(is_off(v) for v in value)
    if isinstance(value, dict):
        return all(is_off(v) for v in value.values())
    return value is None or value is False or value == 0 or value == ""
