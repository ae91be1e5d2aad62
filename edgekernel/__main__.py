from edgekernel.cli.main import main

main()
