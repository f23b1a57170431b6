from py3fs.cli import main

main()
