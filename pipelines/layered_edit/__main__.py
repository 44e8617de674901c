from pipelines.layered_edit.cli import main

main()
