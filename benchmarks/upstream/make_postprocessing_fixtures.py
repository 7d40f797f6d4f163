"""upstream venv: determine_postprocessing on scen2/*, collect postprocessing.json into one fixture file."""
import json, shutil, sys
from pathlib import Path

def main(out_file):
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing
    import nnunetv2
    root = Path("/work/scratch/pp_helper/scen2"); fixtures = {}
    for d in sorted(root.iterdir()):
        up = Path("/work/scratch/pp_helper/up2") / d.name
        shutil.rmtree(up, ignore_errors=True); shutil.copytree(d / "cv", up)
        determine_postprocessing(str(up), str(d / "gt"), None, None, num_processes=1)
        fixtures[d.name] = json.loads((up / "postprocessing.json").read_text())
    Path(out_file).write_text(json.dumps({"_source": f"nnunetv2 {nnunetv2.__version__ if hasattr(nnunetv2, '__version__') else '2.8.x'} determine_postprocessing",
                                          "scenarios": fixtures}, indent=1))

if __name__ == "__main__":
    main(sys.argv[1])
