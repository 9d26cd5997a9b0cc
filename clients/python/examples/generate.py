#!/usr/bin/python3
"""Streams one generation from a deltaserve server to stdout.

    bazel build //clients/python:stubs
    PYTHONPATH=clients/python:bazel-bin/clients/python \\
        /usr/bin/python3 clients/python/examples/generate.py \\
        --server=127.0.0.1:50051 --prompt="import os" --max_new_tokens=64

The text is printed as it arrives, then a newline; with --verbose the finish
reason and token counts go to stderr. Exits 1 with "error: CODE: message"
on stderr when the call fails.
"""

import argparse
import sys

import deltaserve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=deltaserve.DEFAULT_TARGET,
                        help="server address, HOST:PORT (default %(default)s)")
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--max_new_tokens", type=int, default=64,
                        help="tokens to generate (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 is greedy (the default)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline of the call in seconds (default none)")
    parser.add_argument("--verbose", action="store_true",
                        help="print the finish reason and counts to stderr")
    args = parser.parse_args()

    completion = None
    try:
        with deltaserve.Client(args.server, timeout=args.timeout) as client:
            for item in client.generate(args.prompt,
                                        max_new_tokens=args.max_new_tokens,
                                        temperature=args.temperature):
                if isinstance(item, deltaserve.Chunk):
                    sys.stdout.write(item.text)
                    sys.stdout.flush()
                else:
                    completion = item
    except deltaserve.DeltaserveError as error:
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Leaving the loop has cancelled the call.
        return 130
    sys.stdout.write("\n")
    if args.verbose and completion is not None:
        print(f"finish_reason={completion.finish_reason.value} "
              f"prompt_tokens={completion.prompt_tokens} "
              f"completion_tokens={completion.completion_tokens} "
              f"ttft={completion.time_to_first_token_s:.3f}s "
              f"request_id={completion.request_id}",
              file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
