from gliomaseg.cli import main

main()
