from clipcheck.cli import main

main()
