from ot_flow.cli import main

main()
