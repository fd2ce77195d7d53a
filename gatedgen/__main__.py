from gatedgen.cli import main

main()
