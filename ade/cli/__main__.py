from ade.cli.main import main

main()
