from edgekernel.lifeline import guard_parent

guard_parent()  # first: a child whose parent dies during the imports below must not live on

from edgekernel.cli.main import main  # noqa: E402

main()
