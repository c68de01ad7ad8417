from tierline import console_main

console_main()
