from tierline.cli import cli_exit

cli_exit()
