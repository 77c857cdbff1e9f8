"""PanoVLM's command-line tools (`panovlm <command>`), each a module with `build_parser()` and `main(argv)`."""
