package clientapi

import "github.com/gorilla/mux"

func (a *API) loginRoutes(r *mux.Router) {}
