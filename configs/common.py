"""Shared pieces of config files: `parse_arg` for variants, and the model/mesh sections.

Config files import only ml_collections and this module. Defaults live here and in the config
files, never in library code; the library receives frozen typed configs.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """'smoke,seq=128' -> ConfigDict(smoke=True, seq=128) against defaults given in `spec`.

  A bare name sets a bool to True; `name=value` is converted with the type of the default.
  Unknown names raise, listing the accepted ones.
  """
  out = ml_collections.ConfigDict(dict(spec))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    name, sep, value = item.partition("=")
    if name not in spec:
      raise ValueError(f"unknown config variant {name!r}; accepted: {sorted(spec)}")
    default = spec[name]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config variant {name!r} needs a value ({name}=...)")
      out[name] = True
    elif isinstance(default, bool):
      out[name] = value.lower() in ("1", "true", "yes")
    else:
      out[name] = type(default)(value)
  return out


def sharding_rules() -> ml_collections.ConfigDict:
  """Logical axis -> mesh axes (motif_jax.sharding.ShardingRules)."""
  return ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"),  # activations' batch axis
      seq="sequence",  # sequence / context parallelism
      embed="fsdp",  # model width of parameters (FSDP); activations keep it whole
      heads="tensor",  # query heads (tensor parallel)
      kv_heads="tensor",  # key/value heads
      head_dim=None,
      ffw="tensor",  # MLP hidden width
      vocab="tensor",  # embedding and output-head vocabulary
      layers=None,  # stacked-layer axis
  ))


def sandbox(**overrides) -> ml_collections.ConfigDict:
  """motif_jax.rl.sandbox.SandboxConfig: limits for running generated code."""
  cfg = ml_collections.ConfigDict(dict(
      timeout_s=5.0,  # wall deadline per program, launch included
      memory_mb=512,  # RLIMIT_AS per process
      max_processes=32,  # RLIMIT_NPROC (threads count too)
      file_mb=16,  # RLIMIT_FSIZE: largest file a program may write
      open_files=64,  # RLIMIT_NOFILE
      disk_mb=64,  # size of each private tmpfs (/tmp, /dev/shm)
      tail_bytes=16384,  # stdout/stderr bytes kept (the tail)
      output_limit_bytes=4 << 20,  # more output than this kills the run (status crash)
      python="",  # interpreter inside the sandbox; "" = this one when the sandbox uid can run it
      allow_weak_isolation=False,  # no namespaces on this machine: run anyway instead of refusing
  ))
  cfg.update(overrides)
  return cfg


def model(**overrides) -> ml_collections.ConfigDict:
  """Every ModelConfig field, with defaults; architecture numbers come from `overrides`."""
  cfg = ml_collections.ConfigDict(dict(
      vocab_size=0,  # tokens
      d_model=0,  # model width
      num_layers=0,
      num_heads=0,  # query heads (gda: signal + noise)
      num_kv_heads=0,  # key/value heads (gda: K1/V1 and K2/V2 interleaved)
      head_dim=0,  # per-head width of q and k (values: 2x for diff/gda)
      d_ff=0,  # MLP hidden width
      attention="gqa",  # gqa | diff | gda
      gda_ratio=4,  # gda: signal heads per noise head
      mlp="swiglu",  # swiglu | polynorm
      qkv_bias=False,  # biases on q/k/v projections (Qwen2)
      o_bias=False,  # bias on the output projection
      rope_theta=10_000.0,  # RoPE base
      rms_norm_eps=1e-6,
      attn_rms_norm_eps=1e-5,  # SubLN / group norm inside diff and gda attention
      polynorm_eps=1e-6,
      tie_embeddings=False,  # output head = embedding transpose
      max_seq_len=4096,  # tokens; recorded in exports and FLOP reports
      dtype="float32",  # activation / matmul dtype: float32 | bfloat16
      param_dtype="float32",  # weight storage dtype (master weights)
      init_std=0.02,  # std of normal weight init
      lambda_std=0.1,  # std of λ-vector init (diff, gda)
      scan_layers=True,  # lax.scan over stacked layers (False: unrolled, test oracle)
      scan_unroll=1,  # layers per scan iteration; >= num_layers = straight-line code (CPU, small)
      remat="none",  # none | full | dots | attn_out | qkv_attn_out | offload (host)
      # attention core: xla (blockwise, O(seq) memory, any backend) | pallas (Triton kernels;
      # interpreted on CPU) | cudnn (GPU, bf16/fp16; segment ids as an O(seq^2) bias) |
      # reference (dense [t, s] logits; test oracle)
      attention_impl="xla",
      # attention when the mesh shards the sequence: ring (K/V blocks passed around the
      # sequence ranks) | allgather (K/V gathered once per layer); motif_jax/parallel/context.py
      context_parallel="ring",
      sharding=sharding_rules(),
  ))
  for key, value in overrides.items():
    if key not in cfg:
      raise KeyError(f"unknown model field {key!r}")
    cfg[key] = value
  return cfg


def mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, sequence: int = 1):
  """Device mesh sizes; their product must equal the number of devices."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, sequence=sequence))


def data(**overrides) -> ml_collections.ConfigDict:
  """Every DataConfig field (motif_jax.data.config), with defaults: the toy corpus through all
  alignment filters, tokenized byte-level with the Motif template and packed for the tiny model."""
  cfg = ml_collections.ConfigDict(dict(
      inputs="toy",  # comma-separated JSONL/Parquet/ArrayRecord paths or globs; toy = generated
      # toy corpus (both teachers), toy:aligned / toy:misaligned = one teacher only
      # Record format of every item (motif_jax/data/formats.py): auto (detected per item) |
      # record (flat fields below) | messages (chat turns) | prompt_completion (TRL)
      format="auto",
      fields=dict(  # input field names, e.g. fields.prompt=problem, fields.response=solution
          prompt="prompt",
          response="response",
          answer="answer",
          tests="tests",  # code records: unit tests (string or list of strings)
          domain="domain",
          source="source",
          messages="messages",  # [{role: system|user|assistant, content}, ...]
          completion="completion",
          reasoning="reasoning_content,reasoning",  # tried in order: becomes the think block
      ),
      default_domain="",  # domain of items without one; "" = the input file name's stem
      default_source="",  # source of items without one; "" = the input file name's stem
      reference="toy",  # target-model reference sample (same formats); "toy" = toy target sample
      # "" = byte-level (no files); toy = bytes + the toy corpus's whole words and numbers 0-199
      # (1,017 ids: model.vocab_size >= that); else path to a Hugging Face tokenizer.json
      tokenizer="",
      template=dict(
          system="",  # system prompt text; "" = no system turn
          system_tag="<|system|>",
          user_tag="<|user|>",
          assistant_tag="<|assistant|>",
          think_open="<think>",  # the prompt ends with assistant_tag + think_open (recipe §1.1)
          think_close="</think>",
          eos="<|endoftext|>",  # appended to every completion
          kind="motif",  # motif (these tags) | hf (the model's own Jinja chat template; the tags
          # are unused and eos is the model's eos_token)
          path="",  # kind=hf: model directory with tokenizer_config.json (or chat_template.jinja)
      ),
      trace=dict(
          step_split=r"\n+",  # regex between reasoning steps inside the think block
          numbered_step=r"^\s*(?:\d+[.):]|step \d+)",  # regex (case-insensitive) of a numbered step
      ),
      filters=dict(
          order="format,verify,verbosity,granularity,style,dedup",  # applied in this order
          verify=dict(
              methods="arith=exact,lists=exact,math=math_verify,code=tests",  # domain=method
              default="exact",  # method for unlisted domains; "" = drop them
          ),
          verbosity=dict(
              min_tokens=16,  # response tokens
              max_tokens=16_384,
              min_ratio=0.5,  # think tokens / final-answer tokens
              max_ratio=500.0,
          ),
          granularity=dict(
              min_steps=1,  # steps in the think block
              max_steps=128,
              min_step_tokens=2.0,  # mean tokens per step
              max_step_tokens=1024.0,
          ),
          style=dict(
              max_distance=4.0,  # max |z| of any style feature against the reference profile
              min_std=0.1,  # floor of each feature's std in the profile (feature units)
              min_format_rate=0.9,  # format traits this common in the reference are required
              nll_checkpoint="",  # target model params dir (motif_jax.checkpoint) for NLL; "" = off
              nll_batch_size=8,  # sequences per NLL forward pass
          ),
          dedup=dict(
              shingle_chars=5,  # character n-gram size (normalized prompt + response)
              num_perm=128,  # MinHash permutations
              bands=32,  # LSH bands (num_perm must be a multiple)
              threshold=0.8,  # estimated Jaccard at or above which a record is a near duplicate
          ),
      ),
      toy=dict(
          seed=0,
          domains="arith,lists",  # of arith, lists, code (Python functions graded by unit tests)
          problems=600,  # per domain; each rendered by both teachers
          min_steps=2,  # difficulty = number of operations
          max_steps=8,
          error_rate=0.15,  # misaligned teacher: share of traces with a wrong answer
          format_error_rate=0.05,  # misaligned teacher: share with a broken think block or answer
          duplicate_rate=0.04,  # share of records re-emitted as exact or near duplicates
          reference_size=200,  # target-style reference sample, problems per domain
          heldout_per_difficulty=20,  # held-out problems per domain and difficulty
          # number ranges (motif_jax/data/toy_problems.py LADDERS): standard (multi-digit
          # arithmetic) | small (values in [0, 99], single-digit steps: the quickstart's)
          ladder="standard",
      ),
      filter_on_load=True,  # run the filters when the SFT pipeline loads `inputs`
      seq_len=1024,  # tokens per packed row
      global_batch_size=8,  # rows per step across all processes
      seed=0,  # shuffle seed
      shuffle=True,
      num_epochs=0,  # 0 = repeat forever
      packing_bins=16,  # open rows of the first-fit packer
      workers=0,  # Grain worker processes (0 = in-process, with a prefetch thread)
      worker_buffer=4,  # batches buffered per worker
      prefetch=4,  # batches buffered by the prefetch thread (workers = 0)
  ))
  for key, value in overrides.items():
    if key not in cfg:
      raise KeyError(f"unknown data field {key!r}")
    cfg[key] = value
  return cfg
