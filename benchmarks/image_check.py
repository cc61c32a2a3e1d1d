"""The cost of data/image_check.py's header-and-end check against a full decode.

  python benchmarks/image_check.py --root=DIR [--format=laps] [--splits=train,dev,test]
      [--workers=16] [--decode]

Checks every image of each split (printing its report: the unreadable files, named)
and its rate; with --decode, also decodes every file, for the rate the check avoids.
Exit code 1 when a file is unreadable. Figures: data/image_check.py's docstring.
"""
import argparse
import concurrent.futures
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gralign_jax.data import image_check  # noqa: E402  pylint: disable=wrong-import-position
from gralign_jax.data import readers  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True, help="data set folder (config.data.root)")
  p.add_argument("--format", default="laps", choices=readers.FORMATS)
  p.add_argument("--image_dir", default="images")
  p.add_argument("--splits", default="train,dev,test")
  p.add_argument("--workers", type=int, default=16)
  p.add_argument("--decode", action="store_true",
                 help="also decode every image, to compare the time")
  args = p.parse_args(argv)
  bad = 0
  for name in args.splits.split(","):
    split = readers.read_split(args.root, name, format=args.format,
                               image_dir=args.image_dir, check_images=False)
    report = image_check.check_split(split, args.workers)
    bad += len(report.bad)
    print(report.summary(limit=len(report.bad)))
    if report.checked:
      print(f"  header check: {report.images_per_second:,.0f} images/s "
            f"({args.workers} threads)")
    if args.decode and report.checked:
      t0 = time.perf_counter()
      with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
        failed = sum(why is not None
                     for why in pool.map(image_check.decode_failure, split.image_paths))
      rate = split.num_images / (time.perf_counter() - t0)
      print(f"  full decode:  {rate:,.0f} images/s ({failed} failed)")
  return 1 if bad else 0


if __name__ == "__main__":
  raise SystemExit(main())
