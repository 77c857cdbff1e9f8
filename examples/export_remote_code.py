"""Make a saved PanoVLM directory loadable without the PanoVLM library, through transformers' remote code.

    python examples/export_remote_code.py DIR

DIR is a directory written by `save_pretrained` (a model, a processor, or both, e.g. one made by
`examples/build_tiny_checkpoint.py`). The flat modules `configuration_panovlm.py`, `modeling_panovlm.py`,
`processing_panovlm.py` and their siblings are written into it, and `auto_map` is added to `config.json` and
`processor_config.json`. Afterwards, with only transformers and torch (plus numpy and pillow) installed:

    AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)
    AutoProcessor.from_pretrained(DIR, trust_remote_code=True)

Upload DIR as it is, or push with `modeling_panovlm.hub.push_to_hub(repo_id, model, processor, export_remote_code=True)`.
"""

import argparse
import logging

from modeling_panovlm.hub.remote_code import export_remote_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="a directory written by save_pretrained (model and/or processor)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    try:
        written = export_remote_code(args.directory)
    except (FileNotFoundError, ValueError) as error:  # not a saved PanoVLM directory, or an unexportable import
        parser.error(str(error))
    code = [name for name in written if name.endswith(".py")]
    configs = [name for name in written if name.endswith(".json")]
    print(f"wrote {len(code)} modules ({', '.join(code)}) and auto_map in {', '.join(configs)} to {args.directory}")
    print(f"load with: AutoModelForImageTextToText.from_pretrained({args.directory!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main()
