from py3fs_cli import main

main()
