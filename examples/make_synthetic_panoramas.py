"""Write a synthetic panorama captioning dataset in the QuIC-360 CSV format.

    python examples/make_synthetic_panoramas.py --output-dir data/synthetic --num 200

Each panorama shows up to four coloured shapes, at most one per direction (front, right, behind, left; some straddle the +/-180
degree seam). Rows ask where a colour is ("red object"), what is in a direction ("left"), and for a caption
("panorama"). Writes `images/`, `train.csv` and `test.csv` (the last panoramas held out).

`--task ceiling_floor` instead puts one shape on the ceiling and one on the floor (out of sight of horizon views)
and asks "ceiling" / "floor" and where each colour is.
"""

import argparse

from modeling_panovlm.testing.synthetic_panoramas import TASKS, write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num", type=int, required=True, help="number of panoramas")
    parser.add_argument("--height", type=int, default=128, help="panorama height in pixels (width is twice that)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-objects", type=int, default=None, help="objects per panorama (at most 4; default 4)")
    parser.add_argument("--min-objects", type=int, default=None, help="if set, draw 'min..num' objects per panorama")
    parser.add_argument("--task", choices=TASKS, default="directions", help="what the scenes and questions are about")
    args = parser.parse_args()
    train, test = write_synthetic_dataset(
        args.output_dir, args.num, args.seed, args.height, args.test_fraction, args.num_objects, args.min_objects, args.task
    )
    print(f"wrote {train} and {test}")


if __name__ == "__main__":
    main()
