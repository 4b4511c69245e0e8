from gct_ablate.cli import app

app(prog_name="gct-ablate")
